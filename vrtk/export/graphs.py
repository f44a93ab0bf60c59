"""One transform -> one ONNX graph, with dynamic height and width, and a check that it computes what torch does.

Exporter: ``torch.export.export(strict=True)`` (TorchDynamo), then ``torch.onnx.export`` of the ExportedProgram.
The TorchScript exporter (``dynamo=False``) mis-traces ECG's element gate -- it builds the mask in place
(``x2.gt_(th)``, ``x2.mul_(x)``) and the traced graph was off by 0.5 on a tiny model -- and non-strict
``torch.export`` stops at the gates' ``float(...)`` sparsity bookkeeping; strict mode records both correctly.

Input sizes: the coder pads images to a multiple of 64, so g_a's input H, W are 64k, y (h_a's and g_s's input) 4k,
and z (h_s's input) any k. Declaring those multiples lets the exporter prove the shape arithmetic of strided
convolutions and of tile gates for every size.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from vrtk.export import ExportError
from vrtk.export.rate import RateBox

OPSET = 18
MULTIPLE = {"g_a": 64, "h_a": 4, "g_s": 4, "h_s": 1}  # of the input's H and W
OUTPUTS = {"g_a": "y", "h_a": "z", "h_s": "params", "g_s": "x_hat"}


class Graph(nn.Module):
    """What is exported: ``transform(x)``, with the rate taken from the ``lmbda`` input when ``box`` is given."""

    def __init__(self, transform: nn.Module, box: RateBox | None = None):
        super().__init__()
        self.transform = transform
        self.box = box

    def forward(self, x: torch.Tensor, lmbda: torch.Tensor | None = None) -> torch.Tensor:
        if self.box is not None:
            self.box.value = lmbda
        return self.transform(x)


def input_names(rate_input: bool) -> list[str]:
    return ["x", "lmbda"] if rate_input else ["x"]


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress lines and warns about the gates' Python-side bookkeeping: keep stdout clean."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_program(graph: nn.Module, args: tuple, dynamic) -> torch.export.ExportedProgram:
    """``torch.export`` with symbolic sizes that are not specialised to 0 or 1 ("size-oblivious"): a transform
    whose intermediate size is ceil(H / T) would otherwise get a guard "ceil(H / T) != 1" from its sample and fail
    to export for every size. Every graph is checked against torch at several sizes afterwards (``verify``)."""
    from torch.fx.experimental import _config as fx_config

    with fx_config.patch(backed_size_oblivious=True):
        return torch.export.export(graph, args, dynamic_shapes=dynamic, strict=True)


def export_graph(name: str, transform: nn.Module, sample: torch.Tensor, path: Path, box: RateBox | None = None,
                 lmbda: float | None = None, opset: int = OPSET) -> bool:
    """Write ``transform`` as ``path``; ``box``: the rate is an input (``lmbda`` is only the sample's value).
    Returns whether onnxscript's graph optimizer ran."""
    graph = Graph(transform, box).eval()
    args = (sample,) if box is None else (sample, torch.tensor([lmbda], dtype=torch.float64))
    k = MULTIPLE[name]
    h, w = torch.export.Dim(f"{name}_h", min=1, max=1 << 14), torch.export.Dim(f"{name}_w", min=1, max=1 << 14)
    dims = {2: k * h if k > 1 else h, 3: k * w if k > 1 else w}
    dynamic = (dims,) if box is None else (dims, None)
    try:
        with _quiet(), torch.no_grad():
            program = export_program(graph, args, dynamic)
            for optimize in (True, False):  # onnxscript's optimizer can break a graph (a Clip bound read before it
                # is computed, seen with gain's two modulators in h_a): then the graph is written unoptimized
                torch.onnx.export(program, args, str(path), input_names=input_names(box is not None),
                                  output_names=[OUTPUTS[name]], opset_version=opset, external_data=False,
                                  dynamo=True, optimize=optimize)
                if _valid(path):
                    return optimize
            raise ExportError(f"cannot export {name}: the exporter wrote a graph that onnx.checker refuses")
    except ExportError:
        raise
    except Exception as exc:  # the exporter's own errors are long; name the module at fault instead
        if "Constraints violated" in str(exc):
            raise ExportError(f"cannot export {name} with dynamic height and width: {shape_hint(name, transform)}") \
                from exc
        raise ExportError(f"cannot export {name}: {culprit(transform, sample, box, lmbda, name) or _first_line(exc)}") \
            from exc


def shape_hint(name: str, transform: nn.Module) -> str:
    """Why shapes could not stay symbolic."""
    return (f"a module of {name} branches on the input size (torch.export: Constraints violated); a plugin's module "
            "must take one path for every size while torch.compiler.is_compiling() is true, as ECG's tile gates do")


def _valid(path: Path) -> bool:
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def culprit(transform: nn.Module, sample: torch.Tensor, box: RateBox | None, lmbda: float | None,
            prefix: str = "") -> str | None:
    """The innermost module that does not export on its own (first in execution order), as "module P (class)"."""
    inputs: dict[str, tuple] = {}
    handles = []
    for path, module in transform.named_modules():
        if path:
            def hook(mod, args, path=path):
                inputs.setdefault(path, tuple(a.detach() for a in args if isinstance(a, torch.Tensor)))
            handles.append(module.register_forward_pre_hook(hook))
    try:
        if box is not None:
            box.value = torch.tensor([lmbda], dtype=torch.float64)
        with torch.no_grad():
            transform(sample)
    except Exception as exc:
        return f"it does not run in torch ({_first_line(exc)})"
    finally:
        for handle in handles:
            handle.remove()
    failing: dict[str, str] = {}
    for path in inputs:  # execution order
        module = transform.get_submodule(path)
        try:
            with _quiet(), torch.no_grad():
                torch.export.export(module, inputs[path], strict=True)
        except Exception as exc:
            failing[path] = _first_line(exc)
    for path, reason in failing.items():
        if not any(other.startswith(path + ".") for other in failing):
            module = transform.get_submodule(path)
            where = f"{prefix}.{path}" if prefix else path
            return f"module {where} ({type(module).__module__}.{type(module).__qualname__}) does not export ({reason})"
    return None
