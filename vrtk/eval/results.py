"""Results files in CompressAI's schema, plus a ``vrtk`` block, and the curves a report draws from them.

CompressAI's tools (``compressai.utils.plot``) read ``results.bpp`` and ``results.<metric>`` and ignore other
keys, so our per-point extras (lambda, kMACs, MP/s, memory) are further flat lists in ``results`` and everything
else (model, storage, sparsity, the command line) lives under the top-level ``vrtk`` key.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from vrtk.errors import VrtkError
from vrtk.fileio import write_json_atomic

SCHEMA_KEYS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")
QUALITY_KEYS = ("psnr-rgb", "ms-ssim-rgb", "ms-ssim-db-rgb")  # published paper files may carry only MS-SSIM (dB)
KMAC_KEYS = ("encoder_dense", "encoder_effective", "decoder_dense", "decoder_effective")
RESULTS_FORMAT = "vrtk-results"
RESULTS_VERSION = 1


class ResultsError(VrtkError):
    """A results file that is missing, not JSON, or not in CompressAI's schema."""


def write_results(path: str | os.PathLike, data: dict) -> None:
    check_results(data, str(path))
    write_json_atomic(path, data)


def check_results(data, where: str = "results") -> dict:
    """Raise ResultsError unless ``data`` has a name and equally long ``bpp`` and ``psnr-rgb`` lists."""
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ResultsError(f"{where}: not in CompressAI's results schema (no 'results' object)")
    results = data["results"]
    if not isinstance(results.get("bpp"), list):
        raise ResultsError(f"{where}: results.bpp is missing")
    if not any(isinstance(results.get(key), list) for key in QUALITY_KEYS):
        raise ResultsError(f"{where}: results has none of {', '.join(QUALITY_KEYS)}")
    n = len(results["bpp"])
    if n == 0:
        raise ResultsError(f"{where}: no points")
    for key, value in results.items():
        if isinstance(value, list) and len(value) != n:
            raise ResultsError(f"{where}: results.{key} has {len(value)} values, results.bpp has {n}")
    return data


def load_results(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not a JSON results file ({exc})") from None
    return check_results(data, str(path))


def _num(value) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclass
class Curve:
    """One line (or joined set of points) in a plot; a group of one-point fixed-rate files becomes one Curve."""

    label: str
    kind: str  # variable | fixed | classical | reference | external
    bpp: list[float] = field(default_factory=list)
    psnr: list[float | None] = field(default_factory=list)
    msssim: list[float | None] = field(default_factory=list)
    lambdas: list[float | None] = field(default_factory=list)
    encoding_time: list[float | None] = field(default_factory=list)
    decoding_time: list[float | None] = field(default_factory=list)
    encoding_mps: list[float | None] = field(default_factory=list)
    decoding_mps: list[float | None] = field(default_factory=list)
    peak_memory_mb: list[float | None] = field(default_factory=list)
    kmacs: dict[str, list[float | None]] = field(default_factory=lambda: {k: [] for k in KMAC_KEYS})
    sparsity: list[dict[str, float]] = field(default_factory=list)
    layer_kmacs: list[dict | None] = field(default_factory=list)  # per point: {encoder|decoder: {path: [d, e]}}
    storage: list[dict] = field(default_factory=list)  # one entry per model file that went into the curve
    trained_lambdas: list[float] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)  # "folder (n images)" of each file, to catch mixed sets

    def __len__(self) -> int:
        return len(self.bpp)

    @property
    def has_kmacs(self) -> bool:
        return any(v is not None for v in self.kmacs["encoder_dense"])

    def middle(self) -> int:
        """Index of the point in the middle of the curve (by bpp), for one-number summaries."""
        order = sorted(range(len(self.bpp)), key=lambda i: self.bpp[i])
        return order[len(order) // 2]

    def extend(self, other: Curve) -> None:
        for name in ("bpp", "psnr", "msssim", "lambdas", "encoding_time", "decoding_time", "encoding_mps",
                     "decoding_mps", "peak_memory_mb", "sparsity", "layer_kmacs", "storage", "sources", "notes",
                     "commands"):
            getattr(self, name).extend(getattr(other, name))
        self.datasets.extend(d for d in other.datasets if d not in self.datasets)
        for key in KMAC_KEYS:
            self.kmacs[key].extend(other.kmacs[key])
        self.trained_lambdas = sorted(set(self.trained_lambdas) | set(other.trained_lambdas))

    def sort(self) -> None:
        """Points in increasing bpp (fixed-rate files arrive in any order)."""
        order = sorted(range(len(self.bpp)), key=lambda i: self.bpp[i])
        for name in ("bpp", "psnr", "msssim", "lambdas", "encoding_time", "decoding_time", "encoding_mps",
                     "decoding_mps", "peak_memory_mb", "sparsity", "layer_kmacs"):
            values = getattr(self, name)
            if len(values) == len(order):
                setattr(self, name, [values[i] for i in order])
        for key in KMAC_KEYS:
            if len(self.kmacs[key]) == len(order):
                self.kmacs[key] = [self.kmacs[key][i] for i in order]


def curve_from_results(data: dict, source: str = "", kind: str | None = None) -> tuple[Curve, str]:
    """A Curve from one results dict, and the key it is grouped by (fixed-rate files share a group)."""
    results = data["results"]
    meta = data.get("vrtk") or {}
    n = len(results["bpp"])

    def column(key: str) -> list[float | None]:
        values = results.get(key)
        return [_num(v) for v in values] if isinstance(values, list) and len(values) == n else [None] * n

    if kind is None:
        if meta.get("kind") == "classical":
            kind = "classical"
        elif meta.get("kind") == "model":
            kind = "variable" if meta.get("variable_rate") else "fixed"
        else:
            kind = "external"
    name = str(data.get("name") or Path(source).stem or "unnamed")
    msssim = column("ms-ssim-rgb")
    if all(v is None for v in msssim) and isinstance(results.get("ms-ssim-db-rgb"), list):
        msssim = [None if v is None else 1 - 10 ** (-v / 10) for v in column("ms-ssim-db-rgb")]
    sparsity = meta.get("sparsity")
    layer_kmacs = meta.get("layer_kmacs")
    curve = Curve(
        label=name, kind=kind, bpp=[float(v) for v in results["bpp"]], psnr=column("psnr-rgb"),
        msssim=msssim, lambdas=column("lambda"), encoding_time=column("encoding_time"),
        decoding_time=column("decoding_time"), encoding_mps=column("encoding_mps"),
        decoding_mps=column("decoding_mps"), peak_memory_mb=column("peak_memory_mb"),
        kmacs={k: column(f"kmacs_{k}") for k in KMAC_KEYS},
        sparsity=list(sparsity) if isinstance(sparsity, list) and len(sparsity) == n else [{} for _ in range(n)],
        layer_kmacs=list(layer_kmacs) if isinstance(layer_kmacs, list) and len(layer_kmacs) == n else [None] * n,
        storage=[{**meta["storage"], "source": source}] if isinstance(meta.get("storage"), dict) else [],
        trained_lambdas=[float(x) for x in (meta.get("model") or {}).get("trained_lambdas") or []],
        sources=[source] if source else [],
        notes=[f"{source}: {note}" for note in meta.get("notes", [])],
        commands=[str(meta["command"])] if meta.get("command") else [],
    )
    dataset = meta.get("dataset") or {}
    if dataset.get("folder"):
        curve.datasets.append(f"{dataset['folder']} ({dataset.get('images', '?')} images)")
    if "ms-ssim" not in meta.get("metrics", ["ms-ssim"]):
        curve.notes.append(f"{source}: MS-SSIM not measured (vrtk eval --metrics {','.join(meta['metrics'])})")
    elif dataset.get("ms_ssim_skipped"):
        curve.notes.append(f"{source}: MS-SSIM left out for {len(dataset['ms_ssim_skipped'])} image(s) smaller "
                           f"than 161 px on a side")
    group = str(meta.get("group") or name) if kind == "fixed" else f"{source}#{name}"
    if kind == "fixed":
        curve.label = str(meta.get("group") or name)
    return curve, group


def build_curves(items: list[tuple[dict, str]], kind: str | None = None) -> list[Curve]:
    """Curves from (results, source) pairs: fixed-rate results with the same group are joined into one curve."""
    curves: dict[str, Curve] = {}
    for data, source in items:
        curve, group = curve_from_results(data, source, kind)
        if group in curves:
            curves[group].extend(curve)
        else:
            curves[group] = curve
    for curve in curves.values():
        curve.sort()
    return list(curves.values())
