"""The model sweep behind ``vrtk eval``: real bitstreams on an image folder, one results point per rate.

For each rate point and image: pad to 64, ``compress`` (timed, median of repeats), count the bytes of the
strings (CompressAI's convention, so our numbers line up with its published JSONs), ``decompress`` (timed),
crop back, measure PSNR / MS-SSIM on the 8-bit reconstruction. An untimed compress+decompress that counts
MACs (dense and effective, :mod:`vrtk.flops`) runs first and doubles as the warm-up; gating plugins report
per-layer sparsity through the ``vrtk_layer_stats`` hook after each image.
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vrtk.codec import pad, unpad
from vrtk.errors import RateError
from vrtk.eval.measure import METRICS, MS_SSIM_MIN_SIDE, PeakMemory, quality, timed
from vrtk.eval.results import KMAC_KEYS, RESULTS_FORMAT, RESULTS_VERSION
from vrtk.images import list_images, load_image
from vrtk.rate import check_lambda, log_spaced, use_rate


@dataclass
class EvalImage:
    name: str
    tensor: torch.Tensor  # (3, H, W) in [0, 1]
    notes: list[str] = field(default_factory=list)

    @property
    def pixels(self) -> int:
        return int(self.tensor.shape[-1] * self.tensor.shape[-2])


def load_eval_images(folder, limit: int | None = None) -> list[EvalImage]:
    paths = list_images(folder)
    if limit is not None:
        paths = paths[:max(1, limit)]
    out = []
    for path in paths:
        loaded = load_image(path)
        out.append(EvalImage(path.name, loaded.tensor, loaded.notes))
    return out


def rate_points(wrapped, lmbda: float | None = None, lambdas: list[float] | None = None,
                n_points: int = 16) -> list[float | None]:
    """The lambdas to evaluate: a log-even sweep of a variable-rate model's range, or a fixed model's one rate."""
    asked = [lmbda] if lmbda is not None else list(lambdas or [])
    if wrapped.variable_rate:
        if not asked:
            if n_points < 1:
                raise RateError("--n-points must be at least 1")
            asked = log_spaced(min(wrapped.lambdas), max(wrapped.lambdas), n_points)
        return [check_lambda(float(x), wrapped.lambdas) for x in asked]
    own = wrapped.lambdas[0] if wrapped.lambdas else None
    for x in asked:
        if own is None or not math.isclose(float(x), own, rel_tol=1e-6):
            raise RateError(f"this is a fixed-rate model (trained lambda: {own if own is not None else 'unknown'});"
                            f" it cannot be run at lambda {x:g}")
    return [own]


def count_bytes(strings) -> int:
    """Bytes in CompressAI's nested ``strings`` lists (one list per latent, one bytes object per image)."""
    if isinstance(strings, (bytes, bytearray)):
        return len(strings)
    return sum(count_bytes(s) for s in strings)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def aggregate(records: list[dict], peak_mb: float | None) -> dict:
    """One results point from the per-image records of a rate: means over images, MP/s over total time."""
    pixels = sum(r["width"] * r["height"] for r in records)
    enc = sum(r["encoding_time"] for r in records)
    dec = sum(r["decoding_time"] for r in records)
    point = {
        "bpp": _mean(r["bpp"] for r in records), "psnr-rgb": _mean(r["psnr"] for r in records),
        "ms-ssim-rgb": _mean(r["ms_ssim"] for r in records),
        "encoding_time": _mean(r["encoding_time"] for r in records),
        "decoding_time": _mean(r["decoding_time"] for r in records),
        "encoding_mps": pixels / enc / 1e6 if enc > 0 else None,
        "decoding_mps": pixels / dec / 1e6 if dec > 0 else None,
        "peak_memory_mb": peak_mb,
    }
    if any("kmacs" in r for r in records):
        for key in KMAC_KEYS:
            point[f"kmacs_{key}"] = _mean(r.get("kmacs", {}).get(key) for r in records)
    layers = [r["layer_kmacs"] for r in records if "layer_kmacs" in r]
    if layers:
        point["layer_kmacs"] = {side: {name: [_mean(lay[side][name][j] for lay in layers) for j in (0, 1)]
                                       for name in layers[0][side]} for side in layers[0]}
    sparsity: dict[str, list[float]] = {}
    for r in records:
        for key, value in r.get("sparsity", {}).items():
            sparsity.setdefault(key, []).append(value)
    point["sparsity"] = {k: statistics.fmean(v) for k, v in sorted(sparsity.items())}
    return point


def layer_sparsity(net, registry) -> dict[str, float]:
    """Per-layer sparsity the plugins measured in the last forward passes (hook ``vrtk_layer_stats``)."""
    stats: dict[str, float] = {}
    for _, result in registry.call("vrtk_layer_stats", model=net):
        for key, value in (result or {}).items():
            if "sparsity" in key:
                stats[key] = float(value)
    return stats


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr, leave=False)


@torch.no_grad()
def evaluate_model(wrapped, images: list[EvalImage], lambdas: list[float | None], repeats: int = 1,
                   device="cpu", macs: bool = True, registry=None, progress: bool = False, metrics=METRICS,
                   codec=None, refiner=None):
    """Sweep ``lambdas`` over ``images``; returns (points, per-image records, memory kind). ``codec``: what
    compresses and decompresses (a vrtk.export.view.CodecView, e.g. on onnxruntime); default the torch view.
    ``refiner``: a vrtk.refine.RefiningCodec that compresses instead (its encode time is what is timed).
    MACs are always counted on the torch model (the decoder's and one encoder pass: not refinement's steps)."""
    from vrtk.export.view import CodecView
    from vrtk.flops import measure_codec_macs
    from vrtk.plugin_manager import get_registry

    registry = registry or get_registry()
    net = wrapped.net.eval()
    coder = codec if codec is not None else CodecView(net)  # vrtk's own coding path, as vrtk.api.Coder codes
    memory = PeakMemory(device)
    points, per_image = [], []
    bar = progress_bar(len(lambdas) * len(images), "eval", progress)
    try:
        for lmbda in lambdas:
            memory.reset()
            records = []
            with use_rate(net, lmbda, registry):
                for index, image in enumerate(images):
                    x = image.tensor[None].to(device)
                    xp, unpadding = pad(x)
                    record = {"image": image.name, "width": x.shape[-1], "height": x.shape[-2], "lambda": lmbda}
                    if macs:
                        counted = measure_codec_macs(net, xp, lmbda, registry)
                        record["kmacs"] = counted.kmacs_per_pixel()
                        record["layer_kmacs"] = counted.layer_kmacs_per_pixel()
                    elif index == 0:  # warm-up
                        warm = coder.compress(xp)
                        coder.decompress(warm["strings"], warm["shape"])
                    if refiner is not None:
                        enc_time, coded = timed(lambda xp=xp, u=unpadding, r=lmbda: refiner.compress(xp, u, r),
                                                repeats, device)
                        record["refine"] = refiner.last.to_record()
                    else:
                        enc_time, coded = timed(lambda xp=xp: coder.compress(xp), repeats, device)
                    dec_time, out = timed(lambda c=coded: coder.decompress(c["strings"], c["shape"]), repeats,
                                          device)
                    x_hat = unpad(out["x_hat"], unpadding)
                    nbytes = count_bytes(coded["strings"])
                    value, msssim = quality(x, x_hat, metrics)
                    record.update(bytes=nbytes, bpp=nbytes * 8 / image.pixels, psnr=value, ms_ssim=msssim,
                                  encoding_time=enc_time, decoding_time=dec_time)
                    sparsity = layer_sparsity(net, registry)
                    if sparsity:
                        record["sparsity"] = sparsity
                    records.append(record)
                    bar.update(1)
                    bar.set_postfix(lmbda=f"{lmbda:.4g}" if lmbda else "-", bpp=f"{record['bpp']:.3f}")
            points.append(aggregate(records, memory.peak_mb()))
            per_image.extend(records)
    finally:
        bar.close()
    return points, per_image, memory.kind


def results_document(name: str, description: str, points: list[dict], columns: dict[str, list],
                     meta: dict) -> dict:
    """CompressAI's schema first, then our per-point columns, then the ``vrtk`` block."""
    results: dict[str, list] = {}
    for key in ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time", "encoding_mps",
                "decoding_mps", "peak_memory_mb"):
        results[key] = [p[key] for p in points]
    for key in KMAC_KEYS:
        if any(f"kmacs_{key}" in p for p in points):
            results[f"kmacs_{key}"] = [p.get(f"kmacs_{key}") for p in points]
    results.update(columns)
    meta = {"format": RESULTS_FORMAT, "format_version": RESULTS_VERSION, **meta,
            "sparsity": [p["sparsity"] for p in points]}
    if any("layer_kmacs" in p for p in points):
        meta["layer_kmacs"] = [p.get("layer_kmacs") for p in points]
    return {"name": name, "description": description, "results": results, "vrtk": meta}


def default_model_name(model_arg: str, options: dict | None, quality_arg: int | None) -> str:
    path = Path(model_arg)
    if path.is_dir():
        name = path.name if path.name not in ("model", "final", "best", "last") else f"{path.parent.name}/{path.name}"
    else:
        name = model_arg + (f" q{quality_arg}" if quality_arg is not None else "")
    if options:
        name += " [" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + "]"
    return name


def default_group(wrapped, options: dict | None = None) -> str:
    """Fixed-rate models of one architecture, plugin set, metric and options form one curve unless told otherwise."""
    plugins = "".join(f"+{p.name}" for p in wrapped.plugins)
    group = f"{wrapped.base.arch}{plugins} ({wrapped.metric}, fixed-rate)"
    if options:
        group += " [" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + "]"
    return group


def dataset_meta(folder, images: list[EvalImage]) -> dict:
    skipped = [im.name for im in images if min(im.tensor.shape[-2:]) < MS_SSIM_MIN_SIDE]
    return {"folder": str(folder), "images": len(images), "names": [im.name for im in images],
            "pixels": sum(im.pixels for im in images), "ms_ssim_skipped": skipped,
            "image_notes": {im.name: im.notes for im in images if im.notes}}


def environment_meta(device, repeats: int) -> dict:
    import platform

    from vrtk import __version__

    return {"vrtk_version": __version__, "torch_version": torch.__version__, "device": str(device),
            "threads": torch.get_num_threads(), "repeats": repeats, "python": platform.python_version(),
            "machine": platform.machine()}
