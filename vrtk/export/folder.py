"""``vrtk export MODEL -o DIR --format onnx``: a folder that is a vrtk model folder *and* a set of ONNX graphs.

    DIR/config.json, model.safetensors   the model (every tensor), so ``--model DIR`` works on every backend and
                                         files made by one backend decode with the other (same fingerprint)
    DIR/g_a.onnx h_a.onnx h_s.onnx g_s.onnx   the transforms (factorized models: g_a, g_s), opset >= 17,
                                         plugins inside: modulators (the rate an input ``lmbda``, float64 (1,),
                                         or fixed by --lambda), ECG gates as ONNX operators, GDN/IGDN
    DIR/export.json                      what the onnxruntime backend reads: graphs, inputs, rate, options,
                                         fingerprint, the errors measured against torch
    DIR/model_card.md, model_card.json   base, plugins, trained lambdas, kMAC/px, Kodak results if given, command

Every graph is checked against torch before the folder is written (random images of two sizes; three rates when
the rate is an input); a graph off by more than :data:`REL_TOL` of its output's range is an error.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from vrtk.export import ExportError
from vrtk.export.graphs import MULTIPLE, OPSET, OUTPUTS, export_graph, input_names
from vrtk.export.guard import MARGIN
from vrtk.export.rate import RateBox, make_rate_input
from vrtk.export.runtime import FORMAT, FORMAT_VERSION, MANIFEST, session
from vrtk.export.view import CODINGS, CodecView, coding_of
from vrtk.fileio import write_json_atomic

REL_TOL = 1e-4  # max |onnx - torch| / max |torch| per graph output
SAMPLE_SIZE = (128, 192)  # image the graphs are traced with (y: 8x12, z: 2x3)
CHECK_SIZES = ((64, 128), (192, 64))  # other sizes they are checked at: the shapes really are dynamic


def export_onnx(wrapped, out: str | os.PathLike, lmbda: float | None = None, options: dict | None = None,
                command: str = "", results: dict | None = None, opset: int = OPSET, force: bool = False,
                registry=None) -> dict:
    """Write the export folder ``out``; returns its manifest (``export.json``)."""
    from vrtk.api import needs_rate
    from vrtk.export.card import build_card, write_card
    from vrtk.options import apply_options
    from vrtk.plugin_manager import get_registry
    from vrtk.rate import check_lambda

    registry = registry or get_registry()
    _require_packages()
    if opset < 17:
        raise ExportError(f"opset {opset}: the graphs need opset 17 or newer")
    out = Path(out)
    _check_target(out, force)
    net = wrapped.net.eval()
    coding = coding_of(net)
    if coding is None:
        raise ExportError(f"{wrapped.base.arch} ({type(net).__qualname__}) codes with its own compress/decompress "
                          f"(e.g. an autoregressive context model); vrtk exports {', '.join(CODINGS)} codecs")
    rate_dependent = needs_rate(wrapped, registry)
    lams = sorted(wrapped.lambdas)
    if rate_dependent and not lams:
        raise ExportError("this model has rate-dependent plugins but no trained rate range in its config")
    if lmbda is not None:
        if not rate_dependent:
            raise ExportError("this model has no rate-dependent modules: --lambda does not apply")
        fixed = check_lambda(float(lmbda), lams)
    else:
        fixed = lams[0] if rate_dependent and not wrapped.variable_rate else None
    rate_input = rate_dependent and fixed is None

    reference = copy.deepcopy(net).eval()  # options applied; the rate set by use_rate
    apply_options(reference, options, registry)
    exported = copy.deepcopy(reference)  # the rate read from a box when it is a graph input
    box = make_rate_input(exported) if rate_input else None
    sample_lambda = fixed if fixed is not None else (wrapped.middle_lambda() if rate_dependent else None)
    names = CODINGS[coding][1]

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        graphs = {}
        samples = _transform_inputs(reference, names, SAMPLE_SIZE, sample_lambda, registry, seed=0)
        for name in names:
            path = staging / f"{name}.onnx"
            takes_rate = rate_input and uses_rate(reference, name, samples[name], lams, registry)
            with _rate(exported, box, sample_lambda, registry):
                optimized = export_graph(name, getattr(exported, name), samples[name], path,
                                         box if takes_rate else None, sample_lambda, opset)
            graphs[name] = {"file": path.name, "rate_input": takes_rate, "inputs": _inputs(name, takes_rate),
                            "output": OUTPUTS[name], "onnxscript_optimized": optimized}
        errors = verify(staging, graphs, reference, names, rate_input, fixed, lams, registry)
        for name, err in errors.items():
            graphs[name].update(err)
        _save_model(wrapped, staging, fixed)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "coding": coding,
                    "architecture": f"{type(net).__module__}.{type(net).__qualname__}", "opset": opset,
                    "graphs": graphs, "lambda": fixed, "trained_lambdas": lams, "options": dict(options or {}),
                    "fingerprint": wrapped.fingerprint(), "index_guard_margin": MARGIN, "tolerance": REL_TOL,
                    "batch": 1, "exporter": _versions(), "command": command}
        write_json_atomic(staging / MANIFEST, manifest)
        write_card(staging, build_card(wrapped, reference, manifest, sample_lambda, results, registry))
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _require_packages() -> None:
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"exporting to ONNX needs {', '.join(missing)}: pip install 'vrtk[onnx]'")


def _check_target(out: Path, force: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out} is a file")
        if any(out.iterdir()) and not force:
            raise ExportError(f"{out} exists and is not empty (use --force to replace an earlier export)")
        if any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise ExportError(f"{out} is not an earlier export (no {MANIFEST}); refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)


def _swap_in(staging: Path, out: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


class _rate:
    """Set the rate for a block: through the box (rate input) or on the modules (fixed rate)."""

    def __init__(self, net, box: RateBox | None, lmbda: float | None, registry):
        from vrtk.rate import use_rate

        self.box, self.lmbda = box, lmbda
        self.inner = use_rate(net, None if box is not None else lmbda, registry)

    def __enter__(self):
        if self.box is not None:
            self.box.value = torch.tensor([self.lmbda], dtype=torch.float64)
        return self.inner.__enter__()

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)


@torch.no_grad()
def uses_rate(net, name: str, sample: torch.Tensor, lams: list[float], registry) -> bool:
    """Whether transform ``name`` depends on the rate: it holds a rate module, or its output changes across the
    range (a module reading another's rate, like gain's Ungain in h_a)."""
    from vrtk.modulation import RateModule
    from vrtk.rate import use_rate

    transform = getattr(net, name)
    if any(isinstance(m, RateModule) for m in transform.modules()):
        return True
    outputs = []
    for lmbda in (lams[0], lams[-1]):
        with use_rate(net, lmbda, registry):
            outputs.append(transform(sample))
    return not torch.equal(*outputs)


@torch.no_grad()
def _transform_inputs(net, names, size: tuple[int, int], lmbda: float | None, registry, seed: int) -> dict:
    """What each transform receives when ``net`` codes a random image of ``size`` (forward, eval mode)."""
    from vrtk.rate import use_rate

    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, *size, generator=gen)
    seen: dict[str, torch.Tensor] = {}
    handles = [getattr(net, n).register_forward_pre_hook(lambda m, a, n=n: seen.setdefault(n, a[0].detach()))
               for n in names]
    try:
        with use_rate(net, lmbda, registry):
            CodecView(net, channels_last=False).forward(x)  # the inputs as the graphs get them
    finally:
        for h in handles:
            h.remove()
    return seen


@torch.no_grad()
def verify(folder: Path, graphs: dict, reference, names, rate_input: bool, fixed: float | None, lams: list[float],
           registry) -> dict[str, dict]:
    """Run every graph on onnxruntime and the same transform in torch; the largest differences per graph."""
    from vrtk.rate import use_rate

    if rate_input:
        gen = torch.Generator().manual_seed(1)
        inside = math.exp(math.log(lams[0]) + float(torch.rand(1, generator=gen)) * math.log(lams[-1] / lams[0]))
        rates = [lams[0], inside, lams[-1]]
    else:
        rates = [fixed]
    sessions = {n: session(folder / graphs[n]["file"], threads=1) for n in names}
    worst = {n: {"max_abs_error": 0.0, "max_rel_error": 0.0} for n in names}
    for i, size in enumerate(CHECK_SIZES):
        for lmbda in rates:
            inputs = _transform_inputs(reference, names, size, lmbda, registry, seed=10 + i)
            for name in names:
                with use_rate(reference, lmbda, registry):
                    expected = getattr(reference, name)(inputs[name])
                feeds = {"x": inputs[name].numpy()}
                if graphs[name]["rate_input"]:
                    import numpy as np

                    feeds["lmbda"] = np.array([lmbda], dtype=np.float64)
                got = torch.from_numpy(sessions[name].run(None, feeds)[0])
                if got.shape != expected.shape:
                    raise ExportError(f"{name}: onnxruntime gives shape {tuple(got.shape)} for an input of "
                                      f"{tuple(inputs[name].shape)}, torch {tuple(expected.shape)}")
                err = float((got - expected).abs().max())
                rel = err / max(float(expected.abs().max()), 1e-12)
                w = worst[name]
                w["max_abs_error"], w["max_rel_error"] = max(w["max_abs_error"], err), max(w["max_rel_error"], rel)
    for name, w in worst.items():
        if w["max_rel_error"] > REL_TOL:
            raise ExportError(f"{name}: the ONNX graph differs from torch by {w['max_rel_error']:.2e} of its "
                              f"output's range (tolerance {REL_TOL:g}); the export would not code like the model")
    return worst


def _inputs(name: str, rate_input: bool) -> dict[str, str]:
    k = MULTIPLE[name]
    side = f"{k}k" if k > 1 else "k"
    channels = {"g_a": "3", "h_a": "M", "h_s": "N", "g_s": "M"}[name]
    shapes = {"x": f"float32 (1, {channels}, {side}, {side})", "lmbda": "float64 (1,): the rate lambda"}
    return {n: shapes[n] for n in input_names(rate_input)}


def _save_model(wrapped, folder: Path, fixed: float | None) -> None:
    """The model with every tensor (fp16 when every learned parameter is exactly fp16), same fingerprint."""
    from vrtk.model import load_model, save_model

    half = all(torch.equal(p, p.half().float()) for p in wrapped.net.parameters() if p.is_floating_point())
    saved = dataclasses.replace(wrapped, lambdas=[fixed] if fixed is not None else list(wrapped.lambdas))
    save_model(saved, folder, full=True, half=half)
    if load_model(folder).fingerprint() != wrapped.fingerprint():
        raise ExportError("the saved model does not reload to the same weights (fingerprint differs)")


def _versions() -> dict[str, str]:
    import onnx
    import onnxscript

    from vrtk.export.runtime import require_onnxruntime

    return {"method": "torch.export.export(strict=True) + torch.onnx.export (dynamo)", "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxscript": onnxscript.__version__,
            "onnxruntime": require_onnxruntime().__version__}
