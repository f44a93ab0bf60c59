"""``vrtk report``: RD plots, BD-rate against an anchor, storage, compute (MACs, sparsity) and runtime.

Everything is computed from results files (``vrtk eval`` output or any CompressAI-schema JSON), written as PNGs
plus a report.md that GitHub renders, and a report.json with the same tables for machines.
"""

from __future__ import annotations

import fnmatch
import math
import statistics
from datetime import datetime, timezone
from pathlib import Path

from vrtk.errors import VrtkError
from vrtk.eval import storage as storage_mod
from vrtk.eval.bdrate import MIN_OVERLAP, bd, msssim_db, quality_at_rate
from vrtk.eval.results import KMAC_KEYS, Curve, build_curves, load_results
from vrtk.fileio import write_json_atomic, write_text_atomic, write_with_atomic

CLASSICAL_REFERENCES = {"jpeg", "jpeg2000", "webp", "bpg_444_x265_ycbcr", "hm", "vtm", "av1"}  # not trained models
MODEL_KINDS = ("variable", "fixed", "external")


# -- loading -----------------------------------------------------------------------------------------------

def reference_files(paths: list[str], patterns: list[str] | None = None) -> list[Path]:
    """JSON files named directly or found in folders, filtered by glob patterns on the file name."""
    patterns = patterns or ["*"]
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates = sorted(path.glob("*.json"))
        elif path.is_file():
            candidates = [path]
        else:
            raise VrtkError(f"--reference {raw}: no such file or folder")
        found.extend(p for p in candidates if any(fnmatch.fnmatch(p.name, pat) for pat in patterns))
    if paths and not found:
        raise VrtkError(f"--reference: no JSON file matches {patterns} in {paths}")
    return found


def load_curves(results: list[str], references: list[str] | None = None,
                reference_match: list[str] | None = None) -> list[Curve]:
    curves = build_curves([(load_results(p), str(p)) for p in results])
    refs = build_curves([(load_results(p), str(p)) for p in reference_files(references or [], reference_match)],
                        kind="reference")
    for ref in refs:
        stem = Path(ref.sources[0]).stem if ref.sources else ref.label
        trained = stem.lower() not in CLASSICAL_REFERENCES
        ref.label = f"{stem} (published{', GPU-trained' if trained else ''})"
    labels = [c.label for c in curves + refs]
    for curve in curves + refs:  # two files with the same name: tell them apart by file
        if labels.count(curve.label) > 1 and curve.sources:
            curve.label += f" ({Path(curve.sources[0]).stem})"
    return curves + refs


def find_curve(curves: list[Curve], name: str) -> Curve:
    """A curve by its label: exact (case-insensitive), else the only one containing ``name``."""
    exact = [c for c in curves if c.label.lower() == name.lower()]
    if exact:
        return exact[0]
    partial = [c for c in curves if name.lower() in c.label.lower()]
    if len(partial) == 1:
        return partial[0]
    known = ", ".join(repr(c.label) for c in curves)
    what = "matches several curves" if partial else "matches no curve"
    raise VrtkError(f"{name!r} {what}; curves: {known}")


def default_anchor(curves: list[Curve]) -> Curve:
    """JPEG if it was run, else the first classical anchor, else the first curve."""
    ours = [c for c in curves if c.kind != "reference"]
    for c in ours:
        if c.kind == "classical" and "jpeg" in c.label.lower():
            return c
    for c in ours:
        if c.kind == "classical":
            return c
    return (ours or curves)[0]


# -- plots -------------------------------------------------------------------------------------------------

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # matplotlib's tab10
KIND_LINESTYLE = {"variable": "-", "external": "-", "fixed": "-.", "classical": "--", "reference": ":"}
EXTRA_LINESTYLES = ((0, (5, 1, 1, 1)), (0, (1, 1)), (0, (8, 3)), (0, (3, 1, 1, 1, 1, 1)), (0, (12, 2, 2, 2)))
KIND_LINE = {"variable": {"linewidth": 2.0, "marker": ".", "markersize": 4},
             "fixed": {"linewidth": 1.2, "marker": "o", "markersize": 4},
             "classical": {"linewidth": 1.4, "marker": "s", "markersize": 2.5},
             "reference": {"linewidth": 1.3, "marker": "x", "markersize": 3.5, "alpha": 0.85},
             "external": {"linewidth": 1.2, "marker": "^", "markersize": 3.5}}
POINT_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p")
OURS = ("variable", "fixed", "external")  # curves measured here from models (not anchors, not published)


def curve_styles(curves: list[Curve]) -> list[dict]:
    """Matplotlib style per curve: a curve of several points is a line whose (colour, linestyle) pair no other
    line has (the kind picks the first linestyle tried: solid variable-rate, dash-dot fixed-rate, dashed
    classical, dotted published); a one-point result is a marker without a line whose (colour, marker) pair no
    other point has."""
    styles: list[dict] = []
    used: set[tuple[str, str]] = set()
    lines = points = 0
    for curve in curves:
        kind = curve.kind if curve.kind in KIND_LINE else "external"
        if len(curve) == 1:
            styles.append({"color": PALETTE[points % len(PALETTE)], "linestyle": "none", "markersize": 7,
                           "marker": POINT_MARKERS[points % len(POINT_MARKERS)], "markeredgecolor": "black",
                           "markeredgewidth": 0.5})
            points += 1
            continue
        color = PALETTE[lines % len(PALETTE)]
        same_kind = sum(1 for c in curves[:len(styles)] if len(c) > 1 and c.kind == curve.kind)
        width = KIND_LINE[kind]["linewidth"] * max(0.6, 1.35 - 0.15 * same_kind)  # identical curves stay visible
        candidates = [KIND_LINESTYLE[kind], *EXTRA_LINESTYLES]
        candidates += [(0, (2 + n, 1 + n % 3)) for n in range(lines)]  # never runs out
        linestyle = next(ls for ls in candidates if (color, str(ls)) not in used)
        used.add((color, str(linestyle)))
        styles.append({**KIND_LINE[kind], "color": color, "linestyle": linestyle, "linewidth": width})
        lines += 1
    return styles


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    write_with_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def rd_points(curve: Curve, metric: str) -> list[tuple[float, float]]:
    ys = curve.psnr if metric == "psnr" else msssim_db(curve.msssim)
    return [(x, y) for x, y in zip(curve.bpp, ys, strict=True) if y is not None and math.isfinite(y)]


def zoom_box(curves: list[Curve], metric: str) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Axis limits around our own models' points, when they sit in a small corner of the full plot (anchors and
    published curves span far more) or when one-point results need room; None when one panel shows it all."""
    ours = [p for c in curves if c.kind in OURS for p in rd_points(c, metric)]
    every = [p for c in curves for p in rd_points(c, metric)]
    if len(ours) < 2:
        return None
    (x0, x1), (y0, y1) = [(min(v), max(v)) for v in zip(*ours, strict=True)]
    (fx0, fx1), (fy0, fy1) = [(min(v), max(v)) for v in zip(*every, strict=True)]
    singles = any(len(c) == 1 and c.kind in OURS for c in curves)
    small = (x1 - x0) < 0.6 * (fx1 - fx0) or (y1 - y0) < 0.6 * (fy1 - fy0)
    if not (singles or small) or x1 == x0 or y1 == y0:
        return None
    dx, dy = 0.08 * (x1 - x0), 0.08 * (y1 - y0)
    return (x0 - dx, x1 + dx), (y0 - dy, y1 + dy)


def plot_rd(curves: list[Curve], metric: str, path: Path, title: str) -> bool:
    """bpp vs PSNR or vs MS-SSIM (dB); returns False when no curve has the metric.

    All curves on the left; when our models crowd one corner (or one-point results need room), the right panel
    zooms onto them. Legends go below the plots: the curves, and beside them the one-point results (markers
    only)."""
    plt = _pyplot()
    drawn = [(c, s) for c, s in zip(curves, curve_styles(curves), strict=True) if rd_points(c, metric)]
    if not drawn:
        return False
    box = zoom_box([c for c, _ in drawn], metric)
    groups = [[c.label for c, _ in drawn if len(c) > 1], [c.label for c, _ in drawn if len(c) == 1]]
    if box is None:  # one panel: one legend
        groups = [groups[0] + groups[1], []]
    columns = 2 if box else 1
    rows = max(math.ceil(len(g) / 2) for g in groups)
    legend_height = 0.5 + 0.2 * rows
    fig = plt.figure(figsize=(13.5 if box else 8, 5.4 + legend_height))
    grid = fig.add_gridspec(2, columns, height_ratios=[5.4, legend_height])
    axes = [fig.add_subplot(grid[0, i]) for i in range(columns)]
    for ax in axes:
        for curve, style in drawn:
            pts = rd_points(curve, metric)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=curve.label, **style)
        ax.set_xlabel("bits per pixel (real bitstreams)")
        ax.set_ylabel("PSNR RGB (dB)" if metric == "psnr" else "MS-SSIM RGB (dB, -10 log10(1 - MS-SSIM))")
        ax.grid(True, alpha=0.3)
    axes[0].set_title(title if box is None else f"{title}: all curves")
    if box:
        axes[1].set_xlim(*box[0])
        axes[1].set_ylim(*box[1])
        axes[1].set_title("zoom: the models measured here")
    handles = {label: handle for handle, label in zip(*axes[0].get_legend_handles_labels(), strict=True)}
    legend_ax = fig.add_subplot(grid[1, :])
    legend_ax.axis("off")
    for labels, where, heading in ((groups[0], "upper left", "curves"),
                                   (groups[1], "upper right", "one-point results")):
        if labels:
            legend = legend_ax.legend([handles[n] for n in labels], labels, loc=where, ncol=2, fontsize=8,
                                      title=heading if box else None, title_fontsize=8, frameon=False)
            legend_ax.add_artist(legend)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def layer_label(key: str) -> str:
    """``ecg/g_a.2/sparsity`` -> ``g_a.2``."""
    parts = key.split("/")
    return "/".join(parts[1:-1]) if len(parts) >= 3 else key


def sparsity_points(curve: Curve) -> list[int]:
    """Up to three points to show: lowest, middle and highest bpp among those with sparsity."""
    having = sorted((i for i in range(len(curve)) if curve.sparsity[i]), key=lambda i: curve.bpp[i])
    if len(having) <= 3:
        return having
    return [having[0], having[len(having) // 2], having[-1]]


def plot_sparsity(curves: list[Curve], path: Path) -> bool:
    plt = _pyplot()
    import numpy as np

    with_data = [c for c in curves if sparsity_points(c)]
    if not with_data:
        return False
    fig, axes = plt.subplots(len(with_data), 1, figsize=(9, 3.4 * len(with_data)), squeeze=False)
    for ax, curve in zip(axes[:, 0], with_data, strict=True):
        points = sparsity_points(curve)
        layers = sorted({k for i in points for k in curve.sparsity[i]})
        width = 0.8 / len(points)
        xs = np.arange(len(layers))
        for j, i in enumerate(points):
            lam = curve.lambdas[i]
            label = f"{curve.bpp[i]:.3f} bpp" + (f", lambda {lam:.4g}" if lam is not None else "")
            values = [100 * curve.sparsity[i].get(k, float("nan")) for k in layers]
            ax.bar(xs + (j - (len(points) - 1) / 2) * width, values, width, label=label)
        ax.set_xticks(xs, [layer_label(k) for k in layers], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("zeros at the layer input (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"per-layer sparsity: {curve.label}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


# -- tables ------------------------------------------------------------------------------------------------

def bd_table(curves: list[Curve], anchor: Curve) -> list[dict]:
    """BD numbers of every curve against the anchor, each with its overlap and whether it is reliable."""
    rows = []
    for curve in curves:
        psnr = bd(anchor.bpp, anchor.psnr, curve.bpp, curve.psnr)
        ms = bd(anchor.bpp, msssim_db(anchor.msssim), curve.bpp, msssim_db(curve.msssim))
        rows.append({"curve": curve.label, "kind": curve.kind, "points": len(curve),
                     "bd_rate_psnr": psnr.bd_rate, "bd_psnr": psnr.bd_quality,
                     "bd_rate_msssim": ms.bd_rate, "bd_msssim_db": ms.bd_quality,
                     "overlap_psnr": psnr.overlap_quality, "overlap_rate": psnr.overlap_rate,
                     "overlap_msssim": ms.overlap_quality,
                     "psnr_interval": psnr.quality_interval, "bpp_interval": psnr.rate_interval,
                     "reliable_bd_rate_psnr": psnr.rate_reliable, "reliable_bd_psnr": psnr.quality_reliable,
                     "reliable_bd_rate_msssim": ms.rate_reliable, "reliable_bd_msssim_db": ms.quality_reliable,
                     "dropped_points": psnr.dropped, "note": psnr.note})
    return rows


def bd_summary(rows: list[dict], anchor: str) -> dict:
    """The BD-rates a summary may quote (overlap of at least MIN_OVERLAP) and those it must not, with why."""
    reliable, unreliable = [], []
    for row in rows:
        if row["curve"] == anchor or row["bd_rate_psnr"] is None:
            continue
        entry = {"curve": row["curve"], "bd_rate_psnr": row["bd_rate_psnr"], "overlap_psnr": row["overlap_psnr"],
                 "psnr_interval": row["psnr_interval"]}
        if row["reliable_bd_rate_psnr"]:
            reliable.append(entry)
        else:
            entry.update(bd_psnr=row["bd_psnr"], overlap_rate=row["overlap_rate"],
                         reliable_bd_psnr=row["reliable_bd_psnr"])
            unreliable.append(entry)
    return {"anchor": anchor, "min_overlap": MIN_OVERLAP, "reliable": reliable, "unreliable": unreliable}


def storage_tables(curves: list[Curve]) -> dict:
    models = []
    for curve in curves:
        for entry in curve.storage:
            models.append({"curve": curve.label, "source": entry.get("source"), "params": entry["params"],
                           "plugin_params": entry["plugin_params"], "full_bytes_fp32": entry["full_bytes_fp32"],
                           "plugin_bytes_fp32": entry["plugin_bytes_fp32"], "folder_bytes": entry.get("folder_bytes"),
                           "weights": entry.get("weights"), "plugins": entry.get("plugins", []),
                           "plugin_percent_of_full": 100.0 * entry["plugin_bytes_fp32"] / entry["full_bytes_fp32"]
                           if entry["full_bytes_fp32"] else None})
    variable = [c for c in curves if c.kind == "variable" and c.storage]
    fixed = [c for c in curves if c.kind == "fixed" and c.storage and len(c.storage) == len(c)]
    replaces = []
    for v in variable:
        for f in fixed:
            replaces.append({"variable": v.label, "fixed": f.label, "measured": True,
                             **storage_mod.compare(v.storage[0], f.storage)})
        copies = storage_mod.compare_to_copies(v.storage[0])
        if copies:
            replaces.append({"variable": v.label, "fixed": f"{copies['n_fixed']} copies of its base (counted)",
                             "measured": False, **copies})
    return {"models": models, "replaces": replaces}


def _total(curve: Curve, i: int, kind: str) -> float | None:
    enc, dec = curve.kmacs[f"encoder_{kind}"][i], curve.kmacs[f"decoder_{kind}"][i]
    return enc + dec if enc is not None and dec is not None else None


def gated_layer_kmacs(curve: Curve, i: int) -> tuple[float, float] | None:
    """(dense, effective) kMACs/px, encoder + decoder, of the layers a plugin reported sparsity for.

    The dense side is the wrapped convolution alone (``<path>.base_layer``, what the base model runs there); the
    effective side adds whatever the plugin's own module at ``<path>`` counted (a gate's overhead)."""
    layers = curve.layer_kmacs[i] if i < len(curve.layer_kmacs) else None
    paths = {layer_label(key) for key in (curve.sparsity[i] if i < len(curve.sparsity) else {})}
    if not layers or not paths:
        return None
    dense = effective = 0.0
    for side in layers.values():
        for path in paths:
            conv = side.get(f"{path}.base_layer") or side.get(path)
            if conv is None:
                continue
            dense += conv[0]
            effective += conv[1] + (side[path][1] if f"{path}.base_layer" in side and path in side else 0.0)
    return (dense, effective) if dense else None


def _same_lambda(curve: Curve, lmbda: float | None) -> int | None:
    """Index of the point of ``curve`` trained/evaluated at ``lmbda`` (the paper's Table 1 compares those)."""
    if lmbda is None:
        return None
    return next((i for i, x in enumerate(curve.lambdas) if x is not None and math.isclose(x, lmbda, rel_tol=1e-6)),
                None)


def flops_table(curves: list[Curve], baseline: Curve | None) -> list[dict]:
    """Per curve and rate: PSNR drop (%) against the baseline at the same bpp, and MAC reductions (x)."""
    base_eff = None
    if baseline is not None and baseline.has_kmacs:
        values = [_total(baseline, i, "effective") for i in range(len(baseline))]
        values = [v for v in values if v is not None]
        base_eff = statistics.fmean(values) if values else None
    rows = []
    for curve in curves:
        if not curve.has_kmacs:
            continue
        use_base = baseline is not None and curve is not baseline
        matched = quality_at_rate(baseline.bpp, baseline.psnr, curve.bpp) if use_base else [None] * len(curve)
        for i in range(len(curve)):
            twin = _same_lambda(baseline, curve.lambdas[i]) if use_base else None
            twin_psnr = baseline.psnr[twin] if twin is not None else None
            dense, eff = _total(curve, i, "dense"), _total(curve, i, "effective")
            ref, own = matched[i], curve.psnr[i]
            sparsity = curve.sparsity[i] if i < len(curve.sparsity) else {}
            gated = gated_layer_kmacs(curve, i)
            rows.append({
                "curve": curve.label, "lambda": curve.lambdas[i], "bpp": curve.bpp[i], "psnr": own,
                "baseline_psnr": ref,
                "psnr_drop_percent": 100.0 * (ref - own) / ref if ref and own is not None else None,
                **{key: curve.kmacs[key][i] for key in KMAC_KEYS},
                "reduction_vs_dense": dense / eff if dense and eff else None,
                "reduction_vs_baseline": base_eff / eff if use_base and base_eff and eff else None,
                "mean_sparsity": statistics.fmean(sparsity.values()) if sparsity else None,
                "gated_kmacs_dense": gated[0] if gated else None,
                "gated_kmacs_effective": gated[1] if gated else None,
                "gated_reduction": gated[0] / gated[1] if gated and gated[1] else None,
                "same_lambda_bpp_change_percent":
                    100.0 * (curve.bpp[i] / baseline.bpp[twin] - 1) if twin is not None else None,
                "same_lambda_psnr_change_db":
                    own - twin_psnr if twin_psnr is not None and own is not None else None,
            })
    return rows


def runtime_table(curves: list[Curve]) -> list[dict]:
    rows = []
    for curve in curves:
        def med(values):
            values = [v for v in values if v is not None]
            return statistics.median(values) if values else None

        mid = curve.middle()
        rows.append({"curve": curve.label, "kind": curve.kind, "points": len(curve),
                     "encoding_time": med(curve.encoding_time), "decoding_time": med(curve.decoding_time),
                     "encoding_mps": med(curve.encoding_mps), "decoding_mps": med(curve.decoding_mps),
                     "peak_memory_mb": max((v for v in curve.peak_memory_mb if v is not None), default=None),
                     **{f"kmacs_{k}": v[mid] for k, v in curve.kmacs.items()}})
    return rows


# -- markdown ----------------------------------------------------------------------------------------------

def fmt(value, spec: str = ".3f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:{spec}}{suffix}"


def flagged(value, reliable: bool, spec: str, suffix: str) -> str:
    """A BD number, marked † when its overlap is below MIN_OVERLAP."""
    text = fmt(value, spec, suffix)
    return text if value is None or reliable else f"{text} †"


def render_bd_summary(summary: dict) -> list[str]:
    """The BD-rates a reader may quote, and the ones left out with their overlap (and BD-PSNR when that is sound)."""
    limit = f"{100 * summary['min_overlap']:.0f} %"
    lines = [f"**Summary against {summary['anchor']}** (BD-rate, PSNR; only comparisons over at least {limit} "
             "of the joint quality range):", ""]
    for r in summary["reliable"]:
        lo, hi = r["psnr_interval"]
        lines.append(f"- {r['curve']}: {r['bd_rate_psnr']:+.2f} % (over {lo:.2f}–{hi:.2f} dB, "
                     f"{100 * r['overlap_psnr']:.0f} % overlap)")
    if not summary["reliable"]:
        lines.append("- none")
    if summary["unreliable"]:
        left = []
        for r in summary["unreliable"]:
            text = f"{r['curve']} ({100 * r['overlap_psnr']:.0f} %"
            if r["reliable_bd_psnr"]:
                text += f"; BD-PSNR over the shared rate range {r['bd_psnr']:+.2f} dB, {100 * r['overlap_rate']:.0f} %"
            left.append(text + ")")
        lines += ["", f"Left out (PSNR overlap below {limit}): " + "; ".join(left) + "."]
    return lines + [""]


def size(n) -> str:
    if n is None:
        return "–"
    for unit, scale in (("MB", 2**20), ("kB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit} ({n:,} B)"
    return f"{n:,} B"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return out + [""]


def render_markdown(title: str, summary: dict, curves: list[Curve], command: str | None) -> str:
    lines = [f"# {title}", ""]
    lines.append(f"Generated {summary['generated']} by vrtk {summary['vrtk_version']}.")
    if command:
        lines += ["", "```", command, "```"]
    lines.append("")
    lines += ["## Curves", ""]
    rows = []
    for c in curves:
        rows.append([c.label, c.kind, str(len(c)), f"{min(c.bpp):.3f}–{max(c.bpp):.3f}",
                     f"{fmt(min((p for p in c.psnr if p is not None), default=None), '.2f')}–"
                     f"{fmt(max((p for p in c.psnr if p is not None), default=None), '.2f')}",
                     "; ".join(c.datasets) or "–"])
    lines += md_table(["curve", "kind", "points", "bpp", "PSNR (dB)", "images"], rows)
    lines.append("Kinds: *variable* = one variable-rate model swept over its trained lambda range (solid line); "
                 "*fixed* = one-point results of fixed-rate models joined into a curve (dash-dot); *classical* = "
                 "Pillow JPEG/WebP on the same images (dashed); *reference* = published results (CompressAI's "
                 "JSONs; its learned models were trained on GPUs), drawn dotted and not run here. A curve of one "
                 "point is a marker without a line, listed under *one-point results*; every line has its own "
                 "colour and line style. When the models measured here sit in a corner of the plot, the right "
                 "panel zooms onto them.")
    lines.append("")

    lines += ["## Rate–distortion", ""]
    for png, caption in (("rd-psnr.png", "bpp vs PSNR"), ("rd-msssim.png", "bpp vs MS-SSIM")):
        if png in summary["figures"]:
            lines += [f"![{caption}]({png})", ""]

    anchor = summary["anchor"]
    lines += [f"## BD-rate against {anchor}", ""]
    rows = [[r["curve"], flagged(r["bd_rate_psnr"], r["reliable_bd_rate_psnr"], "+.2f", " %"),
             flagged(r["bd_psnr"], r["reliable_bd_psnr"], "+.3f", " dB"),
             flagged(r["bd_rate_msssim"], r["reliable_bd_rate_msssim"], "+.2f", " %"),
             flagged(r["bd_msssim_db"], r["reliable_bd_msssim_db"], "+.3f", " dB"),
             fmt(100 * r["overlap_psnr"], ".0f", " %"), fmt(100 * r["overlap_rate"], ".0f", " %"),
             str(r["dropped_points"]), r["note"] or ""]
            for r in summary["bd"]]
    lines += md_table(["curve", "BD-rate (PSNR)", "BD-PSNR", "BD-rate (MS-SSIM)", "BD-MS-SSIM",
                       "PSNR overlap", "rate overlap", "dropped pts", "note"], rows)
    limit = f"{100 * MIN_OVERLAP:.0f} %"
    lines.append("Bjøntegaard deltas with the `bjontegaard` package, PCHIP interpolation, integrated over the range "
                 "both curves cover: BD-rate over the shared quality range (*PSNR overlap* = its share of the "
                 "joint PSNR range), BD-PSNR over the shared log-rate range (*rate overlap*). Negative BD-rate = "
                 "fewer bits than the anchor at equal quality. MS-SSIM deltas are on the dB scale. Points worse "
                 "than a cheaper point of the same curve are dropped before interpolating. "
                 f"**†** = unreliable: the overlap is below {limit} of the joint range, so the number describes "
                 "the end of one curve, not the codecs; it is shown but left out of the summary below.")
    lines.append("")
    lines += render_bd_summary(summary["bd_summary"])

    st = summary["storage"]
    if st["models"]:
        lines += ["## Storage", ""]
        rows = [[m["curve"], f"{m['params']:,}", f"{m['plugin_params']:,}", size(m["full_bytes_fp32"]),
                 size(m["plugin_bytes_fp32"]), fmt(m["plugin_percent_of_full"], ".2f", " %"),
                 size(m["folder_bytes"]), m["weights"] or "–"]
                for m in st["models"]]
        lines += md_table(["model", "params", "plugin params", "full model fp32", "plugin delta fp32",
                           "delta / full", "folder on disk", "checkpoint"], rows)
        if st["replaces"]:
            rows = [[r["variable"], r["fixed"], str(r["n_fixed"]), f"{r['variable_params']:,}",
                     f"{r['fixed_params']:,}", size(r["variable_bytes_fp32"]), size(r["fixed_bytes_fp32"]),
                     fmt(r["saved_percent_fp32"], ".1f", " %"), fmt(r.get("saved_percent_disk"), ".1f", " %")]
                    for r in st["replaces"]]
            lines += md_table(["variable-rate model", "replaces", "N", "params (1)", "params (N)", "fp32 (1)",
                               "fp32 (N)", "saved (fp32)", "saved (on disk)"], rows)
        lines.append("fp32 sizes count every tensor of the network (weights and entropy-coder tables) as a full "
                     "checkpoint stores it; 'folder on disk' is the measured size of the model folder (a delta "
                     "checkpoint holds only what plugins added or fine-tuning changed). Rows marked 'counted' "
                     "compare with N copies of the base network, N = the lambdas the model was trained on.")
        lines.append("")

    if summary["flops"]:
        base = summary["flops_baseline"]
        lines += ["## Compute (MACs)", ""]
        lines.append("MACs (1 MAC = 2 FLOPs) of the real encode and decode paths per pixel of the padded input, "
                     "counted on the evaluated images; effective MACs skip every tap that meets a zero input "
                     "(ReLU zeros and gated channels alike). PSNR drop is against "
                     + (f"**{base}** at the same bpp (PCHIP in log bpp, inside its range only)." if base else
                        "no baseline (pass `--flops-baseline NAME`)."))
        lines.append("")
        rows = [[r["curve"], fmt(r["lambda"], ".4g"), fmt(r["bpp"], ".3f"), fmt(r["psnr"], ".2f"),
                 fmt(r["psnr_drop_percent"], "+.2f", " %"),
                 f"{fmt(r['encoder_effective'], '.4g')} / {fmt(r['encoder_dense'], '.4g')}",
                 f"{fmt(r['decoder_effective'], '.4g')} / {fmt(r['decoder_dense'], '.4g')}",
                 fmt(r["reduction_vs_dense"], ".2f", "×"), fmt(r["reduction_vs_baseline"], ".2f", "×"),
                 fmt(None if r["mean_sparsity"] is None else 100 * r["mean_sparsity"], ".1f", " %"),
                 fmt(r["gated_reduction"], ".2f", "×"),
                 f"{fmt(r['same_lambda_bpp_change_percent'], '+.1f', ' %')} / "
                 f"{fmt(r['same_lambda_psnr_change_db'], '+.2f', ' dB')}"]
                for r in summary["flops"]]
        lines += md_table(["curve", "lambda", "bpp", "PSNR", "PSNR drop", "enc kMACs/px eff / dense",
                           "dec kMACs/px eff / dense", "reduction vs dense", "reduction vs baseline",
                           "mean sparsity", "gated layers: dense / eff", "vs baseline at same lambda: bpp / PSNR"],
                          rows)
        lines.append("*gated layers*: dense MACs of the convolutions a plugin gates (what the base runs there) over "
                     "their effective MACs plus the gate's own overhead, encoder and decoder together. *Same lambda*: "
                     "the change in bpp and PSNR against the baseline's point trained at that lambda.")
        lines.append("")
    if "sparsity.png" in summary["figures"]:
        lines += ["![per-layer sparsity](sparsity.png)", ""]

    lines += ["## Runtime", ""]
    rows = [[r["curve"], fmt(r["encoding_time"], ".4f"), fmt(r["decoding_time"], ".4f"), fmt(r["encoding_mps"], ".2f"),
             fmt(r["decoding_mps"], ".2f"), fmt(r["peak_memory_mb"], ".0f"),
             f"{fmt(r['kmacs_encoder_effective'], '.4g')} / {fmt(r['kmacs_encoder_dense'], '.4g')}",
             f"{fmt(r['kmacs_decoder_effective'], '.4g')} / {fmt(r['kmacs_decoder_dense'], '.4g')}"]
            for r in summary["runtime"]]
    lines += md_table(["curve", "encode s/img", "decode s/img", "encode MP/s", "decode MP/s", "peak MB",
                       "enc kMACs/px eff / dense", "dec kMACs/px eff / dense"], rows)
    lines.append("Times are medians over the rate points of the per-image median of repeated runs (after a "
                 "warm-up); kMACs at the middle rate point. Published reference timings come from other "
                 "machines. FLOPs alone do not rank codecs: entropy coding and memory traffic count too.")
    lines.append("")

    commands = [(c.label, cmd) for c in curves for cmd in c.commands]
    if commands:
        lines += ["## How the results were made", ""]
        for label, cmd in commands:
            lines += [f"- {label}:", "", "  ```", f"  {cmd}", "  ```", ""]
    if summary["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in summary["notes"]] + [""]
    return "\n".join(lines)


# -- entry point -------------------------------------------------------------------------------------------

def build_report(results: list[str], out_dir, anchor: str | None = None, references: list[str] | None = None,
                 reference_match: list[str] | None = None, flops_baseline: str | None = None,
                 title: str = "vrtk report", command: str | None = None) -> dict:
    """Write PNGs, report.md and report.json into ``out_dir``; returns the summary (report.json's content)."""
    from vrtk import __version__

    curves = load_curves(results, references, reference_match)
    anchor_curve = find_curve(curves, anchor) if anchor else default_anchor(curves)
    if flops_baseline:
        baseline = find_curve(curves, flops_baseline)
    else:
        plain = [c for c in curves if c.kind in ("variable", "fixed") and c.has_kmacs
                 and not any(s for s in c.sparsity)]
        baseline = anchor_curve if anchor_curve.kind in MODEL_KINDS else (plain[0] if plain else None)
        if baseline is not None and not any(c.has_kmacs and c is not baseline for c in curves):
            baseline = None  # nothing to compare with it
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if plot_rd(curves, "psnr", out / "rd-psnr.png", "Rate–distortion (PSNR)"):
        figures.append("rd-psnr.png")
    if plot_rd(curves, "msssim", out / "rd-msssim.png", "Rate–distortion (MS-SSIM)"):
        figures.append("rd-msssim.png")
    if plot_sparsity([c for c in curves if c.kind != "reference"], out / "sparsity.png"):
        figures.append("sparsity.png")
    ours = [c for c in curves if c.kind != "reference"]
    notes = [n for c in curves for n in c.notes]
    datasets = {d for c in ours for d in c.datasets}
    if len(datasets) > 1:
        notes.append(f"the curves were measured on different image sets ({'; '.join(sorted(datasets))}): "
                     "compare them with care")
    bd_rows = bd_table(curves, anchor_curve)
    summary = {
        "title": title, "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "vrtk_version": __version__, "anchor": anchor_curve.label,
        "flops_baseline": baseline.label if baseline else None, "figures": figures,
        "curves": [{"label": c.label, "kind": c.kind, "points": len(c), "sources": c.sources} for c in curves],
        "bd": bd_rows, "bd_summary": bd_summary(bd_rows, anchor_curve.label), "storage": storage_tables(ours),
        "flops": flops_table(ours, baseline), "runtime": runtime_table(curves), "notes": notes,
    }
    write_text_atomic(out / "report.md", render_markdown(title, summary, curves, command))
    write_json_atomic(out / "report.json", summary)
    return summary
