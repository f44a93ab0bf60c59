"""What a model costs to store: bytes on disk (measured) and fp32 sizes of the whole net and the plugin delta.

"One variable-rate model replaces N fixed-rate models" is a storage claim, so it is backed by two numbers:
the files in the model folder as they are, and the size every tensor would take stored as fp32 (what a full
checkpoint holds), counted from the live network so a delta checkpoint and a full one compare fairly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from vrtk.injection import adapters


def folder_bytes(path: str | os.PathLike) -> dict:
    """Sizes of the regular files under ``path`` (recursive) and their sum."""
    root = Path(path)
    files = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
    return {"bytes": sum(files.values()), "files": files}


def tensor_bytes_fp32(tensors) -> int:
    """Bytes of tensors with floating point ones stored as fp32 (integer buffers such as CDF tables as they are)."""
    total = 0
    for tensor in tensors:
        size = 4 if tensor.is_floating_point() else tensor.element_size()
        total += tensor.numel() * size
    return total


def plugin_parameters(net: nn.Module) -> list[torch.Tensor]:
    """Parameters the plugins added (each once, even if adapters nest)."""
    seen: dict[int, torch.Tensor] = {}
    for _, adapter in adapters(net):
        for param in adapter.adapter_params():
            seen.setdefault(id(param), param)
    return list(seen.values())


def model_storage(wrapped, folder: str | os.PathLike | None = None) -> dict:
    """Parameters and bytes of a wrapped model; ``folder`` (its checkpoint) adds the measured file sizes."""
    net = wrapped.net
    state = net.state_dict()
    params = sum(p.numel() for p in net.parameters())
    plugin = plugin_parameters(net)
    out = {
        "params": int(params),
        "plugin_params": int(sum(p.numel() for p in plugin)),
        "full_bytes_fp32": tensor_bytes_fp32(state.values()),
        "plugin_bytes_fp32": tensor_bytes_fp32(plugin),
        "plugins": [p.name for p in wrapped.plugins],
        "trained_lambdas": [float(x) for x in wrapped.lambdas],
        "folder": None, "folder_bytes": None, "files": {}, "weights": None,
    }
    if folder is not None and Path(folder).is_dir():
        measured = folder_bytes(folder)
        out.update(folder=str(folder), folder_bytes=measured["bytes"], files=measured["files"])
        try:
            import json

            out["weights"] = json.loads((Path(folder) / "config.json").read_text()).get("weights")
        except (OSError, ValueError):
            out["weights"] = None
    return out


def compare(variable: dict, fixed: list[dict]) -> dict:
    """One variable-rate model against the fixed-rate models it replaces, on the fp32 size and on disk."""
    n = len(fixed)
    fixed_fp32 = sum(f["full_bytes_fp32"] for f in fixed)
    out = {"n_fixed": n, "variable_params": variable["params"], "fixed_params": sum(f["params"] for f in fixed),
           "variable_bytes_fp32": variable["full_bytes_fp32"], "fixed_bytes_fp32": fixed_fp32,
           "saved_percent_fp32": _saved(variable["full_bytes_fp32"], fixed_fp32),
           "variable_folder_bytes": variable.get("folder_bytes"), "fixed_folder_bytes": None,
           "saved_percent_disk": None}
    if variable.get("folder_bytes") is not None and all(f.get("folder_bytes") is not None for f in fixed):
        out["fixed_folder_bytes"] = sum(f["folder_bytes"] for f in fixed)
        out["saved_percent_disk"] = _saved(variable["folder_bytes"], out["fixed_folder_bytes"])
    return out


def compare_to_copies(variable: dict) -> dict | None:
    """Without measured fixed-rate models: N = the trained lambdas, each a copy of this net without plugins."""
    n = len(variable.get("trained_lambdas") or [])
    if n < 2:
        return None
    base_params = variable["params"] - variable["plugin_params"]
    base_bytes = variable["full_bytes_fp32"] - variable["plugin_bytes_fp32"]
    return {"n_fixed": n, "variable_params": variable["params"], "fixed_params": n * base_params,
            "variable_bytes_fp32": variable["full_bytes_fp32"], "fixed_bytes_fp32": n * base_bytes,
            "saved_percent_fp32": _saved(variable["full_bytes_fp32"], n * base_bytes)}


def _saved(one: int, many: int) -> float | None:
    return 100.0 * (1 - one / many) if many else None
