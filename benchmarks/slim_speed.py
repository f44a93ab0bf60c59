"""Wall-clock of dense vs gated vs slim encode and decode, side by side in one run (``vrtk export --slim``).

Variants, each coding every image for real (``compress`` / ``decompress``, entropy coding included), image by image
in rotating order (so load from other processes hits them alike), after a warm-up, median of ``--repeats``:

    dense         the gated model's weights with the gates removed (every gated conv back to its base_layer)
    ecg           the gated model on PyTorch's dense kernels
    ecg+sparse    the gated model with ``ecg.sparse`` (plugins/ecg/sparse.py)
    slim          the slim model (always-closed channels removed; its remaining gates on dense kernels)
    slim+sparse   the slim model with ``ecg.sparse`` on its remaining gates
    dense@ort     with ``--onnx DIR``: the dense model exported (``vrtk export``) and run on onnxruntime
    slim@ort      with ``--onnx DIR``: the slim model on onnxruntime

The onnxruntime variants code through vrtk's backend view (vrtk/export/view.py: CompressAI's compress/decompress
with the transforms swapped for onnxruntime sessions, ``--threads`` intra-op threads); ratios are against torch's
dense model, so ``dense@ort`` shows what the backend alone buys and ``slim@ort`` what both together buy.

Beside each: bpp of the real bitstreams, PSNR, and dense / effective kMACs per pixel of encoder and decoder
(vrtk.flops, on the same images).

    python benchmarks/slim_speed.py --gated runs/ecg/model --slim runs/ecg-slim --data ../shared/data/kodak \\
        --images 6 --repeats 3 --threads 1 [--onnx /tmp/slim-speed-onnx]
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
MAC_KEYS = ("encoder_dense", "encoder_effective", "decoder_dense", "decoder_effective")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gated", required=True, help="a vrtk model folder with ECG gates")
    p.add_argument("--slim", required=True, help="its slim export (vrtk export GATED -o DIR --slim ...)")
    p.add_argument("--data", default=str(KODAK))
    p.add_argument("--images", type=int, default=6, help="first N images of --data")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--channels-last", action="store_true", help="run every variant in channels-last memory format")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 while other jobs share the CPU)")
    p.add_argument("--onnx", default=None, help="a new folder: export dense and slim there, time them on onnxruntime")
    return p.parse_args(argv)


def variants(gated, slim) -> dict:
    """name -> (network, lambda) of every variant; options applied on copies."""
    from vrtk_plugins.ecg.plugin import unwrap

    from vrtk.options import apply_options

    def with_sparse(net, on: bool):
        net = copy.deepcopy(net)
        apply_options(net, {"ecg.sparse": on})
        return net.eval()

    dense = unwrap(copy.deepcopy(gated.net)).eval()
    dense.update(force=True)
    lg = gated.middle_lambda() if gated.variable_rate else None
    ls = slim.middle_lambda() if slim.variable_rate else None
    return {"dense": (dense, lg), "ecg": (with_sparse(gated.net, False), lg),
            "ecg+sparse": (with_sparse(gated.net, True), lg), "slim": (with_sparse(slim.net, False), ls),
            "slim+sparse": (with_sparse(slim.net, True), ls)}


def onnx_variants(gated, slim, dense, folder: Path, threads: int) -> dict:
    """dense@ort and slim@ort: each model exported to ``folder`` and viewed through onnxruntime sessions."""
    from vrtk.export.folder import export_onnx
    from vrtk.export.view import codec_view
    from vrtk.model import load_model, wrap

    if folder.exists():
        raise SystemExit(f"--onnx {folder} exists; give a new folder")
    folder.mkdir(parents=True)
    found = {}
    for name, model in (("dense", wrap(gated.base, [], net=copy.deepcopy(dense))), ("slim", slim)):
        export_onnx(model, folder / name, command=f"benchmarks/slim_speed.py ({name})")
        exported = load_model(folder / name)
        lmbda = exported.middle_lambda() if exported.variable_rate else None
        found[f"{name}@ort"] = (codec_view(exported, "onnxruntime", folder / name, threads=threads).eval(), lmbda)
    return found


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    import math

    mse = float(torch.mean((a.clamp(0, 1) - b.clamp(0, 1)) ** 2))
    return 10 * math.log10(1 / mse) if mse > 0 else float("inf")


def timed_codec(net, x: torch.Tensor):
    t0 = time.perf_counter()
    coded = net.compress(x)
    t1 = time.perf_counter()
    guard = {"guard": coded["guard"]} if "guard" in coded else {}  # the onnxruntime view's index guard
    out = net.decompress(coded["strings"], coded["shape"], **guard)["x_hat"]
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, coded, out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from vrtk.codec import pad, unpad
    from vrtk.flops import measure_codec_macs
    from vrtk.images import list_images, load_image
    from vrtk.model import load_model
    from vrtk.rate import use_rate

    gated, slim = load_model(args.gated), load_model(args.slim)
    nets = variants(gated, slim)
    if args.onnx:
        nets.update(onnx_variants(gated, slim, nets["dense"][0], Path(args.onnx), args.threads))
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    for net, _ in nets.values():
        net.to(memory_format=layout)  # an onnxruntime view holds the model's entropy models only
    images = [(p.name, load_image(p).tensor[None]) for p in list_images(args.data)[:args.images]]
    print(f"# torch threads {torch.get_num_threads()}, {len(images)} images from {args.data}, {args.repeats} repeats "
          f"(median), warm-up {args.warmup}, {'channels-last' if args.channels_last else 'NCHW'} layout")
    print(f"# gated {args.gated}; slim {args.slim} ({slim.base.arch} {slim.base.arch_kwargs})")
    times = {v: {"enc": [], "dec": []} for v in nets}
    quality = {v: {"bpp": [], "psnr": []} for v in nets}
    macs = {v: dict.fromkeys(MAC_KEYS, 0.0) for v in nets}
    with torch.no_grad():
        for name, img in images:
            x, unpadding = pad(img)
            x = x.contiguous(memory_format=layout)
            per = {v: {"enc": [], "dec": []} for v in nets}
            order = list(nets)
            for rep in range(args.warmup + args.repeats):
                order = order[1:] + order[:1]
                for v in order:
                    net, lmbda = nets[v]
                    with use_rate(net, lmbda):
                        enc, dec, coded, out = timed_codec(net, x)
                    if rep >= args.warmup:
                        per[v]["enc"].append(enc)
                        per[v]["dec"].append(dec)
                    if rep == 0:
                        bits = 8 * sum(len(s) for group in coded["strings"] for s in group)
                        quality[v]["bpp"].append(bits / (img.shape[-1] * img.shape[-2]))
                        quality[v]["psnr"].append(psnr(unpad(out, unpadding), img))
            for v in nets:
                times[v]["enc"].append(statistics.median(per[v]["enc"]))
                times[v]["dec"].append(statistics.median(per[v]["dec"]))
                # MACs are counted on torch modules; an onnxruntime variant does the work of its torch twin
                twin, twin_lambda = nets[v.split("@")[0]]
                counted = measure_codec_macs(twin, x, twin_lambda).kmacs_per_pixel()
                for key in MAC_KEYS:
                    macs[v][key] += counted[key] / len(images)
            print(f"{name}: " + "  ".join(f"{v} {statistics.median(per[v]['enc']):.3f}/"
                                          f"{statistics.median(per[v]['dec']):.3f}s" for v in nets), flush=True)
    print()
    print(f"{'variant':<12} {'enc s/img':>9} {'dec s/img':>9} {'enc ratio':>9} {'dec ratio':>9} {'bpp':>7} "
          f"{'PSNR':>6}  {'enc kMAC/px dense/eff':>21}  {'dec kMAC/px dense/eff':>21}")
    base_enc, base_dec = sum(times["dense"]["enc"]), sum(times["dense"]["dec"])
    for v in nets:
        enc, dec = sum(times[v]["enc"]), sum(times[v]["dec"])
        m = macs[v]
        print(f"{v:<12} {enc / len(images):>9.3f} {dec / len(images):>9.3f} {enc / base_enc:>9.3f} "
              f"{dec / base_dec:>9.3f} {statistics.mean(quality[v]['bpp']):>7.4f} "
              f"{statistics.mean(quality[v]['psnr']):>6.2f}  "
              f"{m['encoder_dense']:>10.2f}/{m['encoder_effective']:<10.2f}  "
              f"{m['decoder_dense']:>10.2f}/{m['decoder_effective']:<10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
