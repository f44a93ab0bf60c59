"""How the embedded default model compares with Pillow's JPEG on the same images, from two results files.

    vrtk eval default --data ../shared/data/kodak -o results/kodak/default.json
    vrtk eval --codec jpeg --data ../shared/data/kodak -o results/kodak/jpeg.json
    python benchmarks/default_vs_jpeg.py results/kodak/default.json results/kodak/jpeg.json

A fixed-rate model is one RD point, so instead of a BD-rate over a curve this prints the two single-point
equivalents: JPEG's PSNR at the model's bpp, and JPEG's bpp at the model's PSNR (both by PCHIP interpolation of
JPEG's curve, in log-rate as BD-rate does) and the rate difference at equal PSNR (negative = fewer bits than JPEG).
"""

from __future__ import annotations

import json
import sys

import numpy as np
from scipy.interpolate import PchipInterpolator


def main(model_path: str, jpeg_path: str) -> None:
    model = json.load(open(model_path))["results"]
    jpeg = json.load(open(jpeg_path))["results"]
    order = np.argsort(jpeg["bpp"])
    rate, psnr = np.log(np.asarray(jpeg["bpp"])[order]), np.asarray(jpeg["psnr-rgb"])[order]
    psnr_at_rate = PchipInterpolator(rate, psnr)
    rate_at_psnr = PchipInterpolator(psnr, rate)
    for bpp, quality in zip(model["bpp"], model["psnr-rgb"], strict=True):
        jpeg_psnr = float(psnr_at_rate(np.log(bpp)))
        jpeg_bpp = float(np.exp(rate_at_psnr(quality)))
        print(f"model: {bpp:.4f} bpp, {quality:.2f} dB | JPEG at {bpp:.4f} bpp: {jpeg_psnr:.2f} dB "
              f"({quality - jpeg_psnr:+.2f} dB) | JPEG at {quality:.2f} dB: {jpeg_bpp:.4f} bpp "
              f"(model rate {100 * (bpp / jpeg_bpp - 1):+.1f}% vs JPEG)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
