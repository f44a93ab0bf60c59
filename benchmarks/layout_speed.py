"""Encode and decode wall-clock of vrtk's torch path with g_a/g_s on channels-last input (the default) against the
same model in NCHW, side by side in one run: each image is coded by both, in turn, after a warm-up; medians of
``--repeats``. Also counts the images both layouts code to identical files, and the largest difference between
their decoded pixels.

    python benchmarks/layout_speed.py --model default --data ../shared/data/kodak --images 24 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LAYOUTS = {"nchw": False, "channels-last": True}


def main(argv=None) -> int:
    from vrtk.api import as_image
    from vrtk.codec import pad
    from vrtk.export.view import codec_view
    from vrtk.model import resolve_model
    from vrtk.rate import use_rate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "kodak"))
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--lmbda", type=float, default=None, help="rate (default: the middle of the model's range)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    wrapped = resolve_model(args.model)
    wrapped.net.eval()
    lmbda = args.lmbda if args.lmbda is not None else wrapped.middle_lambda()
    views = {name: codec_view(wrapped, channels_last=flag) for name, flag in LAYOUTS.items()}
    files = sorted(p for p in Path(args.data).iterdir() if p.suffix.lower() in (".png", ".jpg"))[:args.images]
    enc = {n: [] for n in views}
    dec = {n: [] for n in views}
    same_files, max_diff = 0, 0.0
    with torch.no_grad(), use_rate(wrapped.net, lmbda):
        warm = pad(as_image(str(files[0])).tensor[None])[0]
        for view in views.values():
            view.decompress(**_args(view.compress(warm)))
        for path in files:
            xp = pad(as_image(str(path)).tensor[None])[0]
            per_image_enc, per_image_dec, coded, decoded = {n: [] for n in views}, {n: [] for n in views}, {}, {}
            for _ in range(args.repeats):
                for name, view in views.items():
                    start = time.perf_counter()
                    coded[name] = view.compress(xp)
                    per_image_enc[name].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    decoded[name] = view.decompress(**_args(coded[name]))["x_hat"]
                    per_image_dec[name].append(time.perf_counter() - start)
            for name in views:
                enc[name].append(statistics.median(per_image_enc[name]))
                dec[name].append(statistics.median(per_image_dec[name]))
            same_files += coded["nchw"]["strings"] == coded["channels-last"]["strings"]
            max_diff = max(max_diff, float((decoded["nchw"] - decoded["channels-last"]).abs().max()))
            print(f"{path.name}: " + "  ".join(f"{n} {enc[n][-1]:.3f}/{dec[n][-1]:.3f}s" for n in views), flush=True)
    print(f"\n{wrapped.base.arch} {args.model}, lambda {lmbda:.5g}, {len(files)} images from {args.data}, "
          f"{args.threads} thread(s), median of {args.repeats}; encode/decode seconds per image (mean)")
    base_enc, base_dec = statistics.fmean(enc["nchw"]), statistics.fmean(dec["nchw"])
    for name in views:
        e, d = statistics.fmean(enc[name]), statistics.fmean(dec[name])
        print(f"{name:>14}: encode {e:.3f} s ({e / base_enc:.3f}x)  decode {d:.3f} s ({d / base_dec:.3f}x)")
    print(f"identical files in both layouts: {same_files} of {len(files)}; largest decoded pixel difference "
          f"{max_diff:.2e}")
    return 0


def _args(coded: dict) -> dict:
    return {"strings": coded["strings"], "shape": coded["shape"], "guard": coded["guard"][0]}


if __name__ == "__main__":
    sys.exit(main())
