"""``vrtk export MODEL -o DIR --slim --calibration FOLDER``: a gated model's always-closed channels removed.

The plugin whose gates close the channels does the removal (hook ``vrtk_slim``; ECG: plugins/ecg/slim_export.py);
this command loads the calibration images, writes the slim model folder, reloads it, and prints what was removed,
the dense kMACs per pixel before and after, and how close the slim model stays to the gated one on the calibration
images (likelihood bpp, PSNR, and -- when a GDN was compensated -- the same without the compensation).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from vrtk.errors import VrtkError

REPORT_NAME = "slim_report.json"


def add_slim_args(parser) -> None:
    group = parser.add_argument_group("slim export (--slim)")
    group.add_argument("--slim", action="store_true",
                       help="write a smaller dense model: the channels the gates (nearly) always close on the "
                            "calibration images removed (a vrtk model folder, not ONNX)")
    group.add_argument("--calibration", metavar="FOLDER", default=None, help="images to measure the gates on")
    group.add_argument("--calibration-images", type=int, default=None, metavar="N", help="use the first N only")
    group.add_argument("--min-closed", type=float, default=0.99,
                       help="remove a channel closed on at least this fraction of the inputs (default 0.99)")
    group.add_argument("--no-gdn-compensation", action="store_true",
                       help="do not fold the removed channels' mean share of the GDN normalisation into beta")


def load_calibration(folder: str, limit: int | None) -> list[torch.Tensor]:
    from vrtk.images import list_images, load_image

    files = list_images(folder)
    if limit is not None:
        if limit < 1:
            raise VrtkError(f"--calibration-images must be at least 1, not {limit}")
        files = files[:limit]
    return [load_image(p).tensor for p in files]


def _check_args(args) -> None:
    if not args.calibration:
        raise VrtkError("--slim needs --calibration FOLDER: the images the gates are measured on")
    unused = [flag for flag, value in (("--lambda", args.lmbda), ("--option", args.option),
                                       ("--results", args.results)) if value]
    if unused:
        raise VrtkError(f"{', '.join(unused)} do not apply to --slim (it writes a model folder; export that folder "
                        "to ONNX afterwards)")
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise VrtkError(f"{out} exists and is not empty; pass --force to replace the model in it")


@torch.no_grad()
def compare(models: dict, images: list[torch.Tensor], lmbda: float | None) -> dict[str, dict]:
    """Likelihood bpp and PSNR of each model on ``images``, and each one's PSNR against the first one's output."""
    from vrtk.codec import pad, psnr, unpad
    from vrtk.rate import use_rate

    rows = {name: {"bpp": 0.0, "psnr": 0.0, "vs_first": 0.0} for name in models}
    first = next(iter(models))
    for img in images:
        x = img[None]
        xp, unpadding = pad(x)
        outputs = {}
        for name, wrapped in models.items():
            with use_rate(wrapped.net, lmbda):
                out = wrapped.net(xp)
            bits = sum(float(torch.log2(lk).sum().neg()) for lk in out["likelihoods"].values())
            outputs[name] = unpad(out["x_hat"], unpadding)
            rows[name]["bpp"] += bits / (x.shape[-1] * x.shape[-2]) / len(images)
            rows[name]["psnr"] += psnr(outputs[name], x) / len(images)
            same = psnr(outputs[name], outputs[first])
            rows[name]["vs_first"] += (same if math.isfinite(same) else 999.0) / len(images)
    return rows


def cmd_slim_export(args) -> int:
    from vrtk.codec import pad
    from vrtk.commands.common import load_from_args
    from vrtk.fileio import write_json_atomic
    from vrtk.flops import dense_kmacs_per_pixel
    from vrtk.model import load_model, save_model
    from vrtk.slimming import slim_model

    _check_args(args)
    images = load_calibration(args.calibration, args.calibration_images)
    gated = load_from_args(args).to("cpu")
    gated.net.eval()
    settings = {"min_closed": args.min_closed, "compensate": not args.no_gdn_compensation,
                "also_uncompensated": not args.no_gdn_compensation}
    slim, report = slim_model(gated, [pad(img[None])[0] for img in images], settings)
    uncompensated = report.pop("uncompensated_model", None)
    lambdas = [v for v in report["calibration_lambdas"] if v is not None]
    print(f"slim: {len(images)} calibration images from {args.calibration}"
          f"{', lambdas ' + ', '.join(f'{v:g}' for v in lambdas) if lambdas else ''}; "
          f"channels closed on >= {args.min_closed:.1%} of the inputs removed; GDN compensation "
          f"{'on' if settings['compensate'] else 'off'}")
    print(f"{'link':<5} {'gated conv':<12} {'channels':>12} {'removed closed':>15} {'kept closed':>12} "
          f"{'GDN share':>10}")
    for r in report["links"]:
        removed = f"{r['closed_removed_min']:.3f}" if r["closed_removed_min"] is not None else "-"
        share = f"{r['norm_share']:.1%}" if r["gdn"] else "no GDN"
        print(f"{r['link']:<5} {r['layer']:<12} {r['width']:>5} -> {r['kept']:<4} {removed:>15} "
              f"{r['closed_kept_max']:>12.3f} {share:>10}")
    print("  (removed closed: the least-closed removed channel; kept closed: the most-closed kept one; GDN share: the "
          "removed channels' largest share of a kept channel's mean GDN normalisation, folded into beta when "
          "compensating)")
    lmbda = gated.middle_lambda() if lambdas else None
    before = dense_kmacs_per_pixel(gated.net, lmbda=lmbda)
    after = dense_kmacs_per_pixel(slim.net, lmbda=lmbda)
    print(f"dense kMAC/px: encoder {before['encoder']:.2f} -> {after['encoder']:.2f}, "
          f"decoder {before['decoder']:.2f} -> {after['decoder']:.2f}")
    models = {"gated": gated, "slim": slim}
    if uncompensated is not None:
        models["slim, no GDN compensation"] = uncompensated
    rows = compare(models, images, lmbda)
    print(f"on the calibration images{f' at lambda {lmbda:g}' if lmbda else ''} (forward pass, likelihood bpp):")
    for name, row in rows.items():
        print(f"    {name:<28} {row['bpp']:.4f} bpp  {row['psnr']:.2f} dB"
              + (f"  (output vs gated: {row['vs_first']:.2f} dB PSNR)" if name != "gated" else ""))
    out = Path(args.output)
    save_model(slim, out, full=True)
    report.update(kmacs_per_pixel={"gated_dense": before, "slim_dense": after}, calibration=str(args.calibration),
                  quality=rows, arch=slim.base.arch, arch_kwargs=slim.base.arch_kwargs)
    write_json_atomic(out / REPORT_NAME, json.loads(json.dumps(report, default=str)))
    reloaded = load_model(out)
    if reloaded.fingerprint() != slim.fingerprint():
        raise VrtkError(f"{out}: the reloaded slim model differs from the one written")
    print(f"{out}: {slim.base.arch} {json.dumps(slim.base.arch_kwargs)}, plugins "
          f"{', '.join(p.name for p in slim.plugins)}; reloads with the same fingerprint; report in {REPORT_NAME}")
    return 0
