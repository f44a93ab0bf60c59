"""Encode and decode time of one model on torch and on onnxruntime, with real .vrtk files, and whether files made by
one backend decode to the same latents on the other.

    python benchmarks/backend_speed.py default --export /tmp/default-onnx > results/kodak/backend-speed.txt

Timing: every Kodak image is coded by both backends in turn (the order alternates per image), at 1 and at 2
threads (torch.set_num_threads and onnxruntime's intra-op threads), median of --repeats runs; bpp counts the whole
.vrtk file, PSNR the 8-bit decoded image. Both backends run through vrtk.api.Coder: CompressAI's entropy models
and rANS coder, and only the transforms differ.

Cross-backend: at three rates, each image is coded by each backend and decoded by both; an image counts as a
mismatch when the latents y_hat the two decoders recover differ anywhere. The same files with their index guard
dropped show what the guard prevents.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="default", help="a vrtk model (exported unless --export exists)")
    p.add_argument("--export", required=True, help="export folder (made from MODEL if it does not exist)")
    p.add_argument("--data", default=str(KODAK))
    p.add_argument("--images", type=int, default=None, help="only the first N images")
    p.add_argument("--lambda", dest="lmbda", type=float, default=None, help="rate of the timing (default: middle)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", default="1,2")
    args = p.parse_args(argv)
    print("$ python benchmarks/backend_speed.py " + shlex.join(sys.argv[1:] if argv is None else argv))

    from vrtk.api import Coder
    from vrtk.images import list_images, load_image

    folder = Path(args.export)
    if not folder.exists():
        made = export(args.model, folder)
        print(f"# exported {args.model} -> {folder} in {made:.0f} s")
    images = [load_image(path) for path in list_images(args.data)][: args.images]
    reference = Coder(str(folder))
    wrapped = reference.wrapped
    lams = sorted(wrapped.lambdas)
    lmbda = args.lmbda if args.lmbda is not None else (wrapped.middle_lambda() if reference.rate_dependent else None)
    plugins = ", ".join(p.name for p in wrapped.plugins) or "no plugins"
    print(f"# model {args.model} ({wrapped.base.arch} {wrapped.base.arch_kwargs}, {plugins}), export {folder}; "
          f"{len(images)} images from {args.data}")
    print(f"# {os.cpu_count()} CPUs, load average {_load()} before timing. Other jobs may share this machine, so "
          "absolute times can be\n# inflated and noisy: compare the backends side by side (interleaved image by "
          "image)")
    print(f"# torch {torch.__version__}, onnxruntime {_ort_version()}; repeats {args.repeats}, median per image, "
          "mean over images")
    print()
    timing(images, folder, lmbda, [int(t) for t in args.threads.split(",")], args.repeats)
    print(f"# load average {_load()} after timing")
    print()
    rates = [lams[0], math.sqrt(lams[0] * lams[-1]), lams[-1]] if reference.rate_dependent and len(lams) > 1 \
        else [lmbda]
    mismatches(images, folder, rates)
    return 0


def export(model: str, folder: Path) -> float:
    from vrtk.export.folder import export_onnx
    from vrtk.model import resolve_model

    start = time.perf_counter()
    export_onnx(resolve_model(model), folder, command=f"benchmarks/backend_speed.py {model} --export {folder}")
    return time.perf_counter() - start


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg()) + " (1/5/15 min)"


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _median_time(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def timing(images, folder: Path, lmbda, threads: list[int], repeats: int) -> None:
    from vrtk.api import Coder
    from vrtk.eval.measure import quality

    print(f"lambda {lmbda:.5g}: seconds per image (encode, decode), file bpp, PSNR (8-bit, dB)")
    print(f"{'threads':>7}  {'backend':<12} {'encode s':>9} {'decode s':>9} {'bpp':>8} {'PSNR':>8}   onnxruntime/torch")
    for n in threads:
        torch.set_num_threads(n)
        coders = {"torch": Coder(str(folder)), "onnxruntime": Coder(str(folder), backend="onnxruntime")}
        for coder in coders.values():  # warm-up: first calls allocate
            coder.decode(coder.compress(images[0], lmbda=lmbda).data)
        rows = {name: {"enc": [], "dec": [], "bpp": [], "psnr": []} for name in coders}
        for i, image in enumerate(images):
            order = list(coders) if i % 2 == 0 else list(coders)[::-1]
            for name in order:
                coder = coders[name]
                enc, result = _median_time(lambda c=coder, im=image: c.compress(im, lmbda=lmbda), repeats)
                dec, decoded = _median_time(lambda c=coder, d=result.data: c.decode(d), repeats)
                psnr, _ = quality(image.tensor[None], decoded.tensor[None], ("psnr",))
                row = rows[name]
                row["enc"].append(enc)
                row["dec"].append(dec)
                row["bpp"].append(result.bpp)
                row["psnr"].append(psnr)
        means = {name: {k: statistics.fmean(v) for k, v in row.items()} for name, row in rows.items()}
        for name, m in means.items():
            ratio = ""
            if name == "onnxruntime":
                t = means["torch"]
                ratio = f"   encode {m['enc'] / t['enc']:.2f}x, decode {m['dec'] / t['dec']:.2f}x"
            print(f"{n:>7}  {name:<12} {m['enc']:>9.4f} {m['dec']:>9.4f} {m['bpp']:>8.4f} {m['psnr']:>8.3f}{ratio}")


def latents(coder, data: bytes, guard: bool = True) -> torch.Tensor:
    """The y_hat the coder's decoder recovers from ``data`` (with the file's index guard, or without it)."""
    from vrtk.container import parse

    if not guard:
        header = parse(data)
        header.guard, header.version = b"", 1
        data = header.to_bytes()
    conditional = coder.wrapped.net.gaussian_conditional
    original = conditional.decompress
    captured = []
    conditional.decompress = lambda *a, **k: captured.append(original(*a, **k)) or captured[-1]
    try:
        coder.decode(data)
    except Exception:  # noqa: BLE001 - a desynchronised decoder may fail outright: that is a mismatch too
        return torch.full((1,), float("nan"))
    finally:
        del conditional.decompress
    return captured[0]


def differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Latents differ: other symbols somewhere (means, for mean-scale models, add float noise only)."""
    return a.shape != b.shape or not bool(((a - b).abs() < 0.5).all())


def mismatches(images, folder: Path, rates: list[float]) -> None:
    from vrtk.api import Coder
    from vrtk.container import parse

    torch.set_num_threads(1)
    coders = {"torch": Coder(str(folder)), "onnxruntime": Coder(str(folder), backend="onnxruntime")}
    print("cross-backend decoding: images (of each column's count) whose decoded latents y_hat differ between the "
          "torch and the onnxruntime decoder")
    print(f"{'lambda':>8}  {'file by torch':>14} {'file by onnxrt':>15}   {'same, guard dropped':>20}   "
          f"{'guard bytes/image':>18}  {'of the file':>11}")
    total = {"guarded": 0, "unguarded": 0, "files": 0}
    for lmbda in rates:
        counts = {"torch": 0, "onnxruntime": 0, "torch-": 0, "onnxruntime-": 0}
        guard_bytes, shares = [], []
        for image in images:
            for maker, coder in coders.items():
                data = coder.compress(image, lmbda=lmbda).data
                header = parse(data)
                guard_bytes.append(len(header.guard) + (4 if header.guard else 0))
                shares.append(guard_bytes[-1] / len(data))
                for guarded in (True, False):
                    a, b = (latents(c, data, guarded) for c in coders.values())
                    counts[maker + ("" if guarded else "-")] += differ(a, b)
        n = len(images)
        total["guarded"] += counts["torch"] + counts["onnxruntime"]
        total["unguarded"] += counts["torch-"] + counts["onnxruntime-"]
        total["files"] += 2 * n
        unguarded = f"{counts['torch-']}/{n} + {counts['onnxruntime-']}/{n}"
        share = 100 * statistics.fmean(shares)
        cost = f"{statistics.fmean(guard_bytes):>8.1f} (max {max(guard_bytes):>3}) {share:>10.2f} %"
        print(f"{lmbda:>8.5g}  {counts['torch']:>11}/{n} {counts['onnxruntime']:>12}/{n}   {unguarded:>20}   {cost}")
    print(f"total: {total['guarded']} of {total['files']} files decode to other latents across backends "
          f"({total['unguarded']} with the index guard dropped)")


if __name__ == "__main__":
    sys.exit(main())
