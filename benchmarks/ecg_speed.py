"""Wall-clock of dense vs ECG-gated encode and decode on Kodak, side by side in one run.

Three variants of the same weights are timed image by image, in rotating order (so load from other processes
hits them alike), after a warm-up, taking the median of ``--repeats`` runs of the real ``compress`` /
``decompress`` (entropy coding included):

    dense        the base model, ECG removed (every gated conv back to its base_layer)
    ecg          the gated model on PyTorch's dense kernels (what FLOPs-only papers time)
    ecg+sparse   the gated model with ``ecg.sparse``: zero (tile, channel) blocks skipped (plugins/ecg/sparse.py)

It also checks that ``ecg+sparse`` decodes the same image as ``ecg`` (max abs difference) and prints bpp / PSNR of
the real bitstreams, and the effective kMACs/pixel (vrtk.flops) of dense and gated.

A model with realistic sparsity: ``--model DIR`` (a trained vrtk model folder with ECG), or a base (``--weights
random`` or a checkpoint) wrapped with ECG whose alpha is calibrated on photos-train crops (never Kodak) so that
``--sparsity`` of every gate's inputs are zeroed.

    python benchmarks/ecg_speed.py --weights random --arch-kwargs '{"N": 128, "M": 192}' --sparsity 0.6 \
        --set gate_tile=32 --images 6 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "data" / "kodak"
CALIB = REPO.parent / "shared" / "data" / "photos-train"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a vrtk model folder with ECG (else build one from --arch)")
    p.add_argument("--arch", default="bmshj2018-hyperprior")
    p.add_argument("--weights", default="random", help="random, zoo, or a checkpoint path")
    p.add_argument("--quality", type=int, default=None)
    p.add_argument("--arch-kwargs", default="", help='JSON, e.g. {"N": 128, "M": 192}')
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="ECG config (e.g. gate_tile=32)")
    p.add_argument("--sparsity", type=float, default=0.6, help="calibrated zero fraction of every gate's input")
    p.add_argument("--scope", default="channel", choices=["channel", "layer"], help="calibration scope")
    p.add_argument("--scale", type=float, default=None, help="ecg.scale knob at inference")
    p.add_argument("--tile", type=int, default=None, help="ecg.tile: sparse-path tile (default: the gate tile)")
    p.add_argument("--data", default=str(KODAK))
    p.add_argument("--images", type=int, default=24, help="first N images of --data")
    p.add_argument("--calib", default=str(CALIB))
    p.add_argument("--calib-crops", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--channels-last", action="store_true", help="run every variant in channels-last memory format")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 while other jobs share the CPU)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build(args):
    """(gated WrappedModel, dense net with the same weights, calibration report)."""
    import yaml
    from vrtk_plugins.ecg.plugin import calibrate, unwrap

    from vrtk.commands.common import parse_arch_kwargs
    from vrtk.model import load_model, wrap
    from vrtk.rate import use_rate
    from vrtk.zoo import BaseSpec

    report = {}
    if args.model:
        wrapped = load_model(args.model)
    else:
        settings = {}
        for item in args.set:
            key, _, value = item.partition("=")
            settings[key] = yaml.safe_load(value)
        spec = BaseSpec(arch=args.arch, quality=args.quality, weights=args.weights,
                        arch_kwargs=parse_arch_kwargs(args.arch_kwargs))
        torch.manual_seed(args.seed)
        wrapped = wrap(spec, ["ecg"], {"ecg": settings})
        crops = calibration_crops(Path(args.calib), args.calib_crops, args.seed)
        with use_rate(wrapped.net, wrapped.middle_lambda()):
            report = calibrate(wrapped.net, crops, args.sparsity, args.scope)
    wrapped.net.eval()
    wrapped.net.update(force=True)
    dense = unwrap(copy.deepcopy(wrapped.net)).eval()
    dense.update(force=True)
    return wrapped, dense, report


def calibration_crops(folder: Path, count: int, seed: int) -> torch.Tensor:
    from vrtk.data import CropSampler

    sampler = CropSampler.from_folders(folder, 512, (1,))
    return sampler.sample(count, torch.Generator().manual_seed(seed))


def load_images(folder: str, count: int) -> list[tuple[str, torch.Tensor]]:
    from vrtk.images import list_images, load_image

    return [(p.name, load_image(p).tensor[None]) for p in list_images(folder)[:count]]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    import math

    mse = float(torch.mean((a.clamp(0, 1) - b.clamp(0, 1)) ** 2))
    return 10 * math.log10(1 / mse) if mse > 0 else float("inf")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from vrtk.codec import pad, unpad
    from vrtk.flops import measure_codec_macs
    from vrtk.options import apply_options
    from vrtk.rate import use_rate

    wrapped, dense, report = build(args)
    gated = wrapped.net
    lmbda = wrapped.middle_lambda()
    gated_sparse = copy.deepcopy(gated)
    options = {"ecg.sparse": False}
    if args.scale is not None:
        options["ecg.scale"] = args.scale
    apply_options(gated, options)
    apply_options(gated_sparse, {**options, "ecg.sparse": True, **({"ecg.tile": args.tile} if args.tile else {})})
    variants = {"dense": dense, "ecg": gated, "ecg+sparse": gated_sparse}
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    for net in variants.values():
        net.to(memory_format=layout)
    images = load_images(args.data, args.images)
    cfg = gated.get_submodule(next(n for n, m in gated.named_modules() if hasattr(m, "gate"))).gate.config
    print(f"# torch threads {torch.get_num_threads()}, {len(images)} images from {args.data}, "
          f"{args.repeats} repeats (median), warm-up {args.warmup}, "
          f"{'channels-last' if args.channels_last else 'NCHW'} layout")
    print(f"# model {args.model or f'{args.arch} {args.weights} {args.arch_kwargs}'}; ECG gate_tile={cfg.gate_tile} "
          f"energy_relative={cfg.energy_relative}; calibrated sparsity {args.sparsity if report else '-'} "
          f"({args.scope}); scale {args.scale or 1.0}")
    if report:
        print("# calibration sparsity per layer: " + ", ".join(f"{k} {v:.2f}" for k, v in report.items()))
    times = {name: {"enc": [], "dec": []} for name in variants}
    quality = {name: {"bpp": [], "psnr": []} for name in variants}
    macs = {name: [0.0, 0.0, 0.0, 0.0] for name in ("dense", "ecg")}
    max_diff, differing, total_px, same_bits = 0.0, 0, 0, 0
    bitstreams = {}
    with torch.no_grad(), use_rate(gated, lmbda), use_rate(gated_sparse, lmbda), use_rate(dense, lmbda):
        for name, img in images:
            x, unpadding = pad(img)
            x = x.contiguous(memory_format=layout)
            per = {v: {"enc": [], "dec": []} for v in variants}
            decoded = {}
            order = list(variants)
            for rep in range(args.warmup + args.repeats):
                order = order[1:] + order[:1]
                for v in order:
                    net = variants[v]
                    t0 = time.perf_counter()
                    coded = net.compress(x)
                    t1 = time.perf_counter()
                    out = net.decompress(coded["strings"], coded["shape"])["x_hat"]
                    t2 = time.perf_counter()
                    if rep >= args.warmup:
                        per[v]["enc"].append(t1 - t0)
                        per[v]["dec"].append(t2 - t1)
                    if rep == 0:
                        bitstreams[v] = coded["strings"]
                        decoded[v] = unpad(out, unpadding)
                        bits = 8 * sum(len(s) for group in coded["strings"] for s in group)
                        quality[v]["bpp"].append(bits / (img.shape[-1] * img.shape[-2]))
                        quality[v]["psnr"].append(psnr(decoded[v], img))
            for v in variants:
                times[v]["enc"].append(statistics.median(per[v]["enc"]))
                times[v]["dec"].append(statistics.median(per[v]["dec"]))
            diff = (decoded["ecg+sparse"] - decoded["ecg"]).abs()
            max_diff = max(max_diff, float(diff.max()))
            differing += int((diff.amax(dim=1) > 1e-4).sum())
            total_px += diff.shape[-1] * diff.shape[-2]
            same_bits += bitstreams["ecg+sparse"] == bitstreams["ecg"]
            for v in ("dense", "ecg"):
                m = measure_codec_macs(variants[v], x).kmacs_per_pixel()
                for i, key in enumerate(("encoder_dense", "encoder_effective", "decoder_dense", "decoder_effective")):
                    macs[v][i] += m[key] / len(images)
            print(f"{name}: " + "  ".join(f"{v} enc {statistics.median(per[v]['enc']):.3f}s "
                                          f"dec {statistics.median(per[v]['dec']):.3f}s" for v in variants),
                  flush=True)
    print()
    print(f"{'variant':<11} {'encode s/img':>12} {'decode s/img':>12} {'enc ratio':>9} {'dec ratio':>9} "
          f"{'bpp':>7} {'PSNR dB':>8}")
    base_enc, base_dec = sum(times["dense"]["enc"]), sum(times["dense"]["dec"])
    for v in variants:
        enc, dec = sum(times[v]["enc"]), sum(times[v]["dec"])
        print(f"{v:<11} {enc / len(images):>12.3f} {dec / len(images):>12.3f} {enc / base_enc:>9.3f} "
              f"{dec / base_dec:>9.3f} {statistics.mean(quality[v]['bpp']):>7.4f} "
              f"{statistics.mean(quality[v]['psnr']):>8.2f}")
    print(f"decode ratio ecg+sparse / dense = {sum(times['ecg+sparse']['dec']) / base_dec:.3f}  "
          f"(encode {sum(times['ecg+sparse']['enc']) / base_enc:.3f})")
    print(f"ecg+sparse vs ecg: identical bitstreams for {same_bits}/{len(images)} images; max |x_hat difference| "
          f"{max_diff:.2e}; pixels differing by > 1e-4: {differing / total_px:.2e}"
          + (" (a gate decision flipped by float rounding: the sparse path sums in another order; the .vrtk header "
             "carries ecg.sparse so a decoder takes the encoder's path)" if same_bits < len(images) else ""))
    for v in ("dense", "ecg"):
        ed, ee, dd, de = macs[v]
        print(f"kMACs/pixel {v:<6} encoder dense {ed:.1f} effective {ee:.1f} | decoder dense {dd:.1f} "
              f"effective {de:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
