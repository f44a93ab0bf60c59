"""Tune encoder-side latent refinement (vrtk.refine) on *training* photographs, never on Kodak.

For each setting (steps, Adam lr) and rate, every image is coded for real twice -- plain and refined -- and decoded;
printed per setting: mean change of bits and PSNR, and of the real rate-distortion cost
``bpp + lambda * 255^2 * MSE`` (the quantity refinement lowers), plus the encode seconds per image.

    python benchmarks/refine_tune.py --data ../shared/data/photos-train-2 --images 4 \\
        --settings 20:5e-3,40:5e-3,40:1e-2 --lambdas 0.0018,0.0067,0.025 --threads 1
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))



def load_crops(folder: Path, count: int, height: int, width: int):
    """The first ``count`` images (sorted by name), centre-cropped to ``height`` x ``width`` (Kodak's size)."""
    from vrtk.api import as_image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:count]
    crops = []
    for path in files:
        x = as_image(str(path)).tensor
        h, w = min(height, x.shape[1]), min(width, x.shape[2])
        top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
        crops.append((path.name, as_image(x[:, top:top + h, left:left + w].contiguous())))
    return crops


def measure(coder, image, lmbda: float) -> dict:
    """Real file size, decoded PSNR and real RD cost of one image at one rate; encode seconds."""
    from vrtk.codec import PIXEL_SCALE
    start = time.perf_counter()
    data = coder.encode(image, lmbda)
    seconds = time.perf_counter() - start
    decoded = coder.decode(data).tensor
    mse = float(torch.mean((decoded - image.tensor) ** 2))
    bpp = len(data) * 8 / (image.size[0] * image.size[1])
    return {"bpp": bpp, "psnr": 10 * math.log10(1 / mse), "cost": bpp + lmbda * PIXEL_SCALE * mse, "s": seconds}


def parse_settings(text: str) -> list[tuple[int, float]]:
    settings = []
    for item in text.split(","):
        steps, _, lr = item.partition(":")
        settings.append((int(steps), float(lr)))
    return settings


def main(argv=None) -> int:
    from vrtk.api import Coder
    from vrtk.model import resolve_model
    from vrtk.refine import RefineSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "photos-train-2"))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--crop", default="512x768", help="HxW centre crop")
    parser.add_argument("--settings", default="20:5e-3,40:5e-3", help="STEPS:LR,...")
    parser.add_argument("--lambdas", default="0.0018,0.0067,0.025")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.crop.split("x"))
    crops = load_crops(Path(args.data), args.images, height, width)
    lambdas = [float(v) for v in args.lambdas.split(",")]
    wrapped = resolve_model(args.model)
    plain = Coder(wrapped)
    base = {(name, lm): measure(plain, image, lm) for name, image in crops for lm in lambdas}
    print(f"{len(crops)} images ({args.data}, {args.crop} centre crops), lambdas {lambdas}, {args.threads} thread(s)")
    print(f"{'setting':>12} {'lambda':>8} {'d bpp %':>8} {'d PSNR':>8} {'d cost %':>9} {'s/image':>8}")
    for steps, lr in parse_settings(args.settings):
        coder = Coder(wrapped, refine=RefineSettings(steps, lr))
        rows = {lm: [] for lm in lambdas}
        for name, image in crops:
            for lm in lambdas:
                before, after = base[(name, lm)], measure(coder, image, lm)
                rows[lm].append((100 * (after["bpp"] / before["bpp"] - 1), after["psnr"] - before["psnr"],
                                 100 * (after["cost"] / before["cost"] - 1), after["s"]))
        everything = [r for lm in lambdas for r in rows[lm]]
        for lm, label in [*[(lm, f"{lm:g}") for lm in lambdas], (None, "all")]:
            chosen = everything if lm is None else rows[lm]
            means = [statistics.fmean(col) for col in zip(*chosen, strict=True)]
            print(f"{steps:>5}:{lr:<6g} {label:>8} {means[0]:>+8.2f} {means[1]:>+8.3f} {means[2]:>+9.2f} "
                  f"{means[3]:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
