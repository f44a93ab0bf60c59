"""The ECG compute knob: FLOPs / quality trade-off of scaling every gate's threshold at inference (no retraining).

For each ``--scales`` value, ``ecg.scale`` multiplies all thresholds; every image is coded for real (compress ->
bitstream -> decompress) and the script prints bpp, PSNR, mean gate sparsity and the effective encoder / decoder
kMACs per pixel (vrtk.flops: exact counts under the masks, gate overhead included). ``--reference DIR`` adds the
same row for another model (e.g. the base fine-tuned without ECG for as many steps), so the reductions compare
like with like (its ReLU zeros are credited the same way).

    python benchmarks/ecg_knob.py runs/ecg-finetune-cpu/model --reference runs/base-finetune/model --images 24

A model may also be built on the fly as in ecg_speed.py (``--weights``/``--sparsity``), for a quick look.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ecg_speed import KODAK, build, load_images  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, help="a vrtk model folder with ECG")
    p.add_argument("--reference", default=None, help="a vrtk model folder to compare with (no knob)")
    p.add_argument("--scales", default="0.5,0.71,1,1.41,2")
    p.add_argument("--data", default=str(KODAK))
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the rows here")
    # an on-the-fly model, as in ecg_speed.py
    p.add_argument("--arch", default="bmshj2018-hyperprior")
    p.add_argument("--weights", default="random")
    p.add_argument("--quality", type=int, default=None)
    p.add_argument("--arch-kwargs", default="")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--scope", default="channel", choices=["channel", "layer"])
    p.add_argument("--calib", default=str(KODAK.parent / "photos-train"))
    p.add_argument("--calib-crops", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


@torch.no_grad()
def evaluate(net, images, lmbda, registry=None) -> dict:
    """Mean bpp (real bitstream), PSNR, gate sparsity and effective kMACs/pixel over ``images``."""
    from vrtk.codec import pad, unpad
    from vrtk.flops import measure_codec_macs
    from vrtk.plugin_manager import get_registry
    from vrtk.rate import use_rate

    registry = registry or get_registry()
    rows = []
    for _, img in images:
        x, unpadding = pad(img)
        with use_rate(net, lmbda, registry):
            coded = net.compress(x)
            x_hat = unpad(net.decompress(coded["strings"], coded["shape"])["x_hat"], unpadding).clamp(0, 1)
            stats = {}
            for _, s in registry.call("vrtk_layer_stats", model=net):
                stats.update(s)
        macs = measure_codec_macs(net, x, lmbda, registry).kmacs_per_pixel()
        bits = 8 * sum(len(s) for group in coded["strings"] for s in group)
        mse = float(torch.mean((x_hat - img) ** 2))
        sparsity = [v for k, v in stats.items() if k.startswith("ecg/")]
        rows.append({"bpp": bits / (img.shape[-1] * img.shape[-2]), "psnr": 10 * math.log10(1 / mse),
                     "sparsity": sum(sparsity) / len(sparsity) if sparsity else 0.0,
                     "enc_kmacs": macs["encoder_effective"], "dec_kmacs": macs["decoder_effective"],
                     "enc_dense": macs["encoder_dense"], "dec_dense": macs["decoder_dense"]})
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from vrtk.model import load_model
    from vrtk.options import apply_options

    images = load_images(args.data, args.images)
    if args.model:
        wrapped = load_model(args.model)
    else:
        ns = argparse.Namespace(**{**vars(args), "model": None})
        wrapped, _, _ = build(ns)
    net = wrapped.net.eval()
    lmbda = wrapped.middle_lambda()
    print(f"# {len(images)} images from {args.data}; model {args.model or args.weights}; torch threads "
          f"{torch.get_num_threads()}; effective kMACs/pixel (dense in brackets), real bitstreams")
    print(f"{'setting':<16} {'bpp':>7} {'PSNR':>7} {'sparsity':>8} {'enc kMAC/px':>18} {'dec kMAC/px':>18}")
    out = []

    def show(label, r):
        out.append({"setting": label, **r})
        print(f"{label:<16} {r['bpp']:>7.4f} {r['psnr']:>7.2f} {r['sparsity']:>8.3f} "
              f"{r['enc_kmacs']:>8.2f} ({r['enc_dense']:>6.2f}) {r['dec_kmacs']:>8.2f} ({r['dec_dense']:>6.2f})",
              flush=True)

    if args.reference:
        ref = load_model(args.reference)
        show("reference", evaluate(ref.net.eval(), images, ref.middle_lambda()))
    for scale in (float(s) for s in args.scales.split(",")):
        apply_options(net, {"ecg.scale": scale})
        show(f"ecg.scale={scale:g}", evaluate(net, images, lmbda))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
