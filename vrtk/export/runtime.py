"""The onnxruntime backend: the exported graphs as the transforms of a :class:`vrtk.export.view.CodecView`.

Each graph becomes a callable ``tensor -> tensor``; graphs with a ``lmbda`` input read the rate from the model's
rate modules, where :func:`vrtk.rate.use_rate` put it, so the coder sets the rate the same way for every backend.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from vrtk.errors import RateError, VrtkError
from vrtk.export import ExportError

MANIFEST = "export.json"
FORMAT = "vrtk-onnx"
FORMAT_VERSION = 1


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("the onnxruntime backend needs onnxruntime: pip install 'vrtk[onnx]'") from None
    return onnxruntime


def session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session with ``threads`` intra-op threads (None: onnxruntime's default)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_manifest(folder: str | Path) -> dict:
    """The ``export.json`` of a folder made by ``vrtk export``, checked for format and version."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ExportError(f"{folder}: not a folder made by `vrtk export` (no {MANIFEST}); the onnxruntime backend "
                          "runs one: vrtk export MODEL -o DIR --format onnx, then --model DIR")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: unreadable ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{path}: not a vrtk ONNX export")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ExportError(f"{path}: export format {manifest['format_version']} is newer than this vrtk reads "
                          f"({FORMAT_VERSION}); upgrade vrtk")
    return manifest


def current_rate(net) -> float | None:
    """The rate set on the model's rate modules (they all hold the same one), or None."""
    from vrtk.modulation import RateModule

    for module in net.modules():
        if isinstance(module, RateModule):
            return module.lmbda
    return None


class OnnxTransform:
    """One graph as a transform: torch tensor in, torch tensor out (on the input's device)."""

    def __init__(self, name: str, session, net, rate_input: bool, fixed_lambda: float | None):
        self.name, self.session, self.net = name, session, net
        self.rate_input, self.fixed_lambda = rate_input, fixed_lambda
        self.input_name = session.get_inputs()[0].name

    def _feeds(self, x: torch.Tensor) -> dict:
        feeds = {self.input_name: x.detach().to("cpu", torch.float32).contiguous().numpy()}
        rate = current_rate(self.net)
        if self.rate_input:
            if rate is None:
                raise RateError(f"{self.name}: no rate is set; code inside vrtk.rate.use_rate(view, lmbda)")
            feeds["lmbda"] = np.array([rate], dtype=np.float64)
        elif self.fixed_lambda is not None and rate is not None and not math.isclose(rate, self.fixed_lambda,
                                                                                     rel_tol=1e-9):
            raise RateError(f"these graphs were exported at lambda {self.fixed_lambda:g} only, not {rate:g}")
        return feeds

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, self._feeds(x))[0]
        return torch.from_numpy(out).to(x.device)


def onnx_transforms(folder, wrapped, threads: int | None = None) -> tuple[dict[str, OnnxTransform], dict]:
    """({name: transform} for the graphs in ``folder``, its manifest); ``wrapped`` is the model saved there."""
    if not isinstance(folder, (str, Path)):
        raise ExportError("the onnxruntime backend runs a folder made by `vrtk export`: pass its path as the model")
    manifest = read_manifest(folder)
    if manifest.get("fingerprint") != wrapped.fingerprint():
        raise ExportError(f"{folder}: the model files do not match the graphs (fingerprint "
                          f"{wrapped.fingerprint()[:12]}, exported from {str(manifest.get('fingerprint'))[:12]}); "
                          "export again")
    threads = threads or torch.get_num_threads()
    fixed = manifest.get("lambda")
    transforms = {}
    for name, info in manifest["graphs"].items():
        path = Path(folder) / info["file"]
        if not path.is_file():
            raise ExportError(f"{folder}: {info['file']} is missing")
        try:
            sess = session(path, threads)
        except Exception as exc:
            raise VrtkError(f"{path}: onnxruntime cannot load it ({exc})") from None
        transforms[name] = OnnxTransform(name, sess, wrapped.net, bool(info["rate_input"]), fixed)
    return transforms, manifest
