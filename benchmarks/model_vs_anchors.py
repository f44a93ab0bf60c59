"""Each RD point of a model against classical anchors, from results files: the anchor's PSNR at the model's bpp and
the anchor's bpp at the model's PSNR (PCHIP in log-rate, as BD-rate interpolates). Meaningful where a BD-rate is
not: for one-point models, and for a curve that covers a small part of the anchor's range.

    vrtk eval default --data ../shared/data/kodak --n-points 16 -o results/kodak-v0.2/default.json
    vrtk eval --codec webp --data ../shared/data/kodak --qualities 0,1,...,95 -o results/kodak-v0.2/webp.json
    python benchmarks/model_vs_anchors.py results/kodak-v0.2/default.json results/kodak-v0.2/{jpeg,webp}.json

Negative rate = fewer bits than the anchor at the same PSNR; nan = outside the anchor's measured range.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from base_study import bpp_at, psnr_at  # noqa: E402


def main(model_path: str, *anchor_paths: str) -> None:
    model = json.loads(Path(model_path).read_text())
    anchors = {json.loads(Path(p).read_text()).get("name", Path(p).stem): json.loads(Path(p).read_text())["results"]
               for p in anchor_paths}
    head = "".join(f" {name + ' dB':>10} {name + ' rate':>11}" for name in anchors)
    print(f"{model.get('name', model_path)}: each point against {', '.join(anchors)} on the same images")
    print(f"{'bpp':>7} {'PSNR':>6}{head}")
    for bpp, quality in zip(model["results"]["bpp"], model["results"]["psnr-rgb"], strict=True):
        cells = "".join(f" {quality - psnr_at(a, bpp):+10.2f} {100 * (bpp / bpp_at(a, quality) - 1):+10.1f}%"
                        for a in anchors.values())
        print(f"{bpp:7.4f} {quality:6.2f}{cells}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
