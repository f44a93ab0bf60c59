"""How long the JPEG and WebP sweeps of ``vrtk eval`` take with the old and the new quality measurement.

    python benchmarks/eval_speed.py --data ../shared/data/kodak -o results/eval-speed.txt

Three implementations run the same sweep (Pillow's qualities 5..95 on every image, ``--repeats`` timed codec runs
per image as ``vrtk eval`` does):

- ``pytorch_msssim``: vrtk's measurement before issue 18 (PSNR, then ``pytorch_msssim.ms_ssim`` per image);
- ``vrtk``: :class:`vrtk.eval.measure.QualityMeter` (the original's maps filtered once per image, one
  channels-last separable filter call per scale and decoding);
- ``psnr only``: ``vrtk eval --metrics psnr``.

They are interleaved image by image, so a change in machine load hits all three alike: the ratio is the
result, the absolute times depend on the machine. The per-image MS-SSIM values of the two implementations are
compared (the largest absolute difference is printed; the bound is 1e-4), as are the PSNRs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from vrtk.codec import psnr
from vrtk.eval.classical import DEFAULT_QUALITIES, evaluate_classical
from vrtk.eval.evaluate import load_eval_images
from vrtk.eval.measure import MS_SSIM_MIN_SIDE, QualityMeter, to_8bit
from vrtk.fileio import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "kodak"
TOLERANCE = 1e-4


def legacy_quality(original: torch.Tensor, decoded: torch.Tensor, metrics) -> tuple[float, float | None]:
    """vrtk's ``quality`` before issue 18, kept here as the baseline: pytorch_msssim on the 8-bit images."""
    from pytorch_msssim import ms_ssim

    decoded = to_8bit(decoded.float())
    original = original.float()
    value = psnr(decoded, original)
    if "ms-ssim" not in metrics or min(original.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return value, None
    return value, float(ms_ssim(original, decoded, data_range=1.0))


def legacy_meter(original: torch.Tensor, metrics):
    return lambda decoded: legacy_quality(original, decoded, metrics)


VARIANTS = {  # name -> (meter factory, metrics)
    "pytorch_msssim": (legacy_meter, ("psnr", "ms-ssim")),
    "vrtk": (QualityMeter, ("psnr", "ms-ssim")),
    "psnr only": (QualityMeter, ("psnr",)),
}


class TimedMeter:
    """A meter factory whose meters add up the time spent inside them (the quality share of the sweep)."""

    def __init__(self, factory):
        self.factory, self.seconds = factory, 0.0

    def __call__(self, original, metrics):
        meter = self.factory(original, metrics)

        def timed_meter(decoded):
            start = time.perf_counter()
            try:
                return meter(decoded)
            finally:
                self.seconds += time.perf_counter() - start

        return timed_meter


def sweep(codec: str, images, qualities, repeats: int) -> dict[str, dict]:
    """Every variant over every quality, interleaved image by image; wall time, quality time, records."""
    out = {name: {"seconds": 0.0, "records": [], "measure": TimedMeter(factory)}
           for name, (factory, _) in VARIANTS.items()}
    for image in images:
        for name, (_, metrics) in VARIANTS.items():
            entry = out[name]
            start = time.perf_counter()
            _, records, _ = evaluate_classical(codec, [image], qualities, repeats, metrics=metrics,
                                               meter=entry["measure"])
            entry["seconds"] += time.perf_counter() - start
            entry["records"].extend(records)
    return out


def largest_difference(a: list[dict], b: list[dict], key: str) -> float:
    pairs = [(x[key], y[key]) for x, y in zip(a, b, strict=True) if x[key] is not None and y[key] is not None]
    if len(pairs) != len(a):
        raise RuntimeError(f"{key}: {len(a) - len(pairs)} record(s) without a value")
    return max(abs(x - y) for x, y in pairs)


def report(codec: str, result: dict[str, dict], n_images: int, n_qualities: int) -> list[str]:
    base, new, fast = (result[name] for name in VARIANTS)
    lines = [f"{codec}: {n_images} images x {n_qualities} qualities",
             f"  {'measurement':<16} {'sweep s':>9} {'quality s':>10} {'quality share':>14} {'speed-up':>9}"]
    for name, entry in result.items():
        share = entry["measure"].seconds / entry["seconds"]
        lines.append(f"  {name:<16} {entry['seconds']:9.1f} {entry['measure'].seconds:10.1f} {100 * share:13.1f}% "
                     f"{base['seconds'] / entry['seconds']:8.2f}x")
    ms = largest_difference(base["records"], new["records"], "ms_ssim")
    db = largest_difference(base["records"], new["records"], "psnr")
    same_psnr = largest_difference(new["records"], fast["records"], "psnr")
    lines.append(f"  sweep time ratio pytorch_msssim / vrtk = {base['seconds'] / new['seconds']:.2f} "
                 f"(MS-SSIM alone: {base['measure'].seconds / new['measure'].seconds:.2f}); "
                 f"psnr only: {base['seconds'] / fast['seconds']:.2f}")
    lines.append(f"  max |MS-SSIM difference| over {len(new['records'])} images: {ms:.2e} "
                 f"({'within' if ms <= TOLERANCE else 'OVER'} {TOLERANCE:g}); max |PSNR difference| {db:.2e} dB "
                 f"(psnr only vs vrtk: {same_psnr:.2e} dB)")
    return lines


def user_sweeps(codec: str, images, qualities, settings: list[tuple[int, int]]) -> list[str]:
    """The sweep as ``vrtk eval --codec`` runs it (MS-SSIM included), wall seconds per (repeats, workers)."""
    lines = [f"  vrtk eval --codec {codec} as a user runs it, {len(images)} images x {len(qualities)} qualities:"]
    for repeats, workers in settings:
        start = time.perf_counter()
        evaluate_classical(codec, images, qualities, repeats, workers=workers)
        lines.append(f"    --repeats {repeats} --workers {workers}: {time.perf_counter() - start:6.1f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA), help="image folder (default: Kodak)")
    parser.add_argument("--codecs", default="jpeg,webp")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--qualities", default=None, help="comma-separated (default 5..95 in steps of 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed codec runs per image (vrtk eval's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="processes for the last timing of the user-facing sweep (default: one per CPU)")
    parser.add_argument("-o", "--output", default=None, help="also write the output to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    qualities = [int(q) for q in args.qualities.split(",")] if args.qualities else DEFAULT_QUALITIES
    images = load_eval_images(args.data, args.limit)
    lines = ["$ " + shlex.join(["python", "benchmarks/eval_speed.py", *(sys.argv[1:] if argv is None else argv)]),
             f"# torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPU(s), repeats {args.repeats};"
             f" load average at start {os.getloadavg()[0]:.1f}"]
    print("\n".join(lines), flush=True)
    for codec in [c.strip() for c in args.codecs.split(",") if c.strip()]:
        block = report(codec, sweep(codec, images, qualities, args.repeats), len(images), len(qualities))
        block += user_sweeps(codec, images, qualities, [(args.repeats, 1), (1, 1), (1, args.workers)])
        print("\n".join(block), flush=True)
        lines += block
    tail = (f"# load average at end {os.getloadavg()[0]:.1f}: the three measurements ran interleaved image by "
            "image, so compare ratios; absolute seconds depend on the machine and its load")
    print(tail)
    lines.append(tail)
    if args.output:
        write_text_atomic(args.output, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
