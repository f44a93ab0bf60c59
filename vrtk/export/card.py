"""The model card of an export folder: what the model is, what it costs, how well it codes, how it was made."""

from __future__ import annotations

from pathlib import Path

from vrtk.fileio import write_json_atomic, write_text_atomic

KMAC_SIZE = (512, 768)  # Kodak's size: dense MACs per pixel hardly depend on it, but name the one used


def rate_text(manifest: dict) -> str:
    if any(g["rate_input"] for g in manifest["graphs"].values()):
        return "a graph input (`lmbda`, float64)"
    if manifest["lambda"] is not None:
        return f"fixed at lambda {manifest['lambda']:g}"
    return "none (a fixed-rate model)"


def build_card(wrapped, net, manifest: dict, lmbda: float | None, results: dict | None, registry=None) -> dict:
    """The card as JSON-ready data; ``net`` has the exported options applied, ``results`` is a vrtk eval JSON."""
    from vrtk.flops import dense_kmacs_per_pixel

    base = wrapped.base
    card = {
        "base": {"arch": base.arch, "quality": base.quality, "metric": wrapped.metric,
                 "weights": base.weights, "arch_kwargs": base.arch_kwargs},
        "plugins": [{"name": p.name, "version": p.version, "config": p.config} for p in wrapped.plugins],
        "trained_lambdas": sorted(wrapped.lambdas),
        "rate": rate_text(manifest),
        "options": manifest["options"],
        "kmacs_per_pixel": {**dense_kmacs_per_pixel(net, KMAC_SIZE, lmbda, registry),
                            "kind": f"dense, vrtk/flops.py, on a {KMAC_SIZE[1]}x{KMAC_SIZE[0]} image"},
        "graphs": {n: {"file": g["file"], "inputs": g["inputs"], "max_rel_error_vs_torch": g["max_rel_error"]}
                   for n, g in manifest["graphs"].items()},
        "fingerprint": manifest["fingerprint"],
        "command": manifest["command"],
    }
    if results is not None:
        card["results"] = _results_summary(results)
    return card


def _results_summary(doc: dict) -> dict:
    r = doc["results"]
    points = []
    for i, bpp in enumerate(r["bpp"]):
        point = {"bpp": bpp}
        for key in ("lambda", "psnr-rgb", "ms-ssim-rgb", "kmacs_decoder_effective", "kmacs_encoder_effective"):
            if isinstance(r.get(key), list):
                point[key] = r[key][i]
        points.append(point)
    meta = doc.get("vrtk", {})
    dataset = meta.get("dataset", {})
    return {"name": doc.get("name"), "dataset": dataset.get("folder") or dataset.get("name"),
            "images": dataset.get("images"), "command": meta.get("command"), "points": points}


def render(card: dict) -> str:
    """The card as markdown."""
    base = card["base"]
    kmacs = card["kmacs_per_pixel"]
    sizes = ", ".join(f"{k}={v}" for k, v in (base["arch_kwargs"] or {}).items())
    lams = card["trained_lambdas"]
    lines = [
        "# Model card", "",
        f"- **Base**: {base['arch']}" + (f" quality {base['quality']}" if base["quality"] else "")
        + (f" ({sizes})" if sizes else "") + f", {base['metric']}; every tensor in model.safetensors "
        f"(base weights recorded as: {base['weights']})",
        "- **Plugins**: " + (", ".join(f"{p['name']} {p['version'] or ''}".strip() for p in card["plugins"])
                             or "none"),
        "- **Trained lambda range**: " + (f"{lams[0]:g} .. {lams[-1]:g} ({len(lams)} lambdas)" if len(lams) > 1
                                          else f"{lams[0]:g}" if lams else "none (fixed-rate)"),
        f"- **Rate in the graphs**: {card['rate']}",
        f"- **Options**: {card['options'] or 'none'}",
        f"- **kMAC/pixel**: encoder {kmacs['encoder']:.4g}, decoder {kmacs['decoder']:.4g} ({kmacs['kind']})",
        f"- **Made by**: `{card['command']}`" if card["command"] else "- **Made by**: the Python API",
        f"- **Fingerprint**: `{card['fingerprint']}` (the .vrtk files it reads and writes name it)",
        "", "## Graphs", "", "| graph | inputs | max difference from torch (of output range) |", "|---|---|---|",
    ]
    for g in card["graphs"].values():
        inputs = "; ".join(f"`{k}` {v}" for k, v in g["inputs"].items())
        lines.append(f"| `{g['file']}` | {inputs} | {g['max_rel_error_vs_torch']:.1e} |")
    if "results" in card:
        res = card["results"]
        lines += ["", f"## Results: {res['name']} on {res['dataset']} ({res['images']} images, real bitstreams)", ""]
        if res.get("command"):
            lines += [f"`{res['command']}`", ""]
        keys = [k for k in ("lambda", "bpp", "psnr-rgb", "ms-ssim-rgb", "kmacs_decoder_effective")
                if any(k in p for p in res["points"])]
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for p in res["points"]:
            lines.append("| " + " | ".join(f"{p[k]:.4g}" if isinstance(p.get(k), float) else str(p.get(k, ""))
                                           for k in keys) + " |")
    else:
        lines += ["", "No evaluation results were given (`vrtk export ... --results EVAL.json` adds them)."]
    lines += ["", "Entropy coding is CompressAI's rANS coder in vrtk: run the folder with "
              "`vrtk compress/decompress/eval --backend onnxruntime --model DIR`.", ""]
    return "\n".join(lines)


def write_card(folder: Path, card: dict) -> None:
    write_json_atomic(folder / "model_card.json", card)
    write_text_atomic(folder / "model_card.md", render(card))
