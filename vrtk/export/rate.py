"""The rate as a graph input: each modulator's ``scale()`` recomputed from a lambda tensor instead of a float.

A :class:`vrtk.modulation.ChannelModulator` computes its vector from ``self.lmbda`` in Python, which an export would
freeze into a constant. For export, every rate module of a *copy* of the model gets an instance-level ``scale``
that reads lambda from a :class:`RateBox` the graph fills from its ``lmbda`` input (float64, shape (1,)); modules
that use another module's ``scale()`` (gain's ``Ungain``) follow automatically.

Known modulators: the shipped ``bm`` and ``gain``. A third-party modulator takes the rate as an input when it
defines ``scale_for(lmbda: Tensor) -> Tensor`` (the tensor form of its ``scale()``); others can still be exported at
one fixed rate (``--lambda``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from vrtk.export import ExportError
from vrtk.modulation import RateModule


class RateBox:
    """Where the graph's lambda input is put for the modulators to read (a float64 tensor of shape (1,))."""

    value: torch.Tensor | None = None


def _clamped(module: RateModule, lmbda: torch.Tensor) -> torch.Tensor:
    """lambda clamped to the module's range in float64, as ``RateModule.set_rate`` clamps it."""
    return lmbda.to(torch.float64).clamp(module.lambdas[0], module.lambdas[-1])


def bm_scale(module, lmbda: torch.Tensor) -> torch.Tensor:
    """``BitrateModulator.scale``: exp(W2 ReLU(W1 t + b1) + b2), t = log lambda normalised to [-1, 1]."""
    lo, hi = math.log(module.lambdas[0]), math.log(module.lambdas[-1])
    log_l = torch.log(_clamped(module, lmbda))
    t = torch.zeros_like(log_l) if hi == lo else 2.0 * (log_l - lo) / (hi - lo) - 1.0
    inp = t.to(module.hidden.weight.dtype).reshape(1, 1)
    return torch.exp(module.out(torch.relu(module.hidden(inp))))[0]


def gain_scale(module, lmbda: torch.Tensor) -> torch.Tensor:
    """``GainUnit.scale``: |m_s|^(1-l) |m_s+1|^l between the trained lambdas around lambda (log-linear l)."""
    n = len(module.lambdas)
    if n == 1:
        return module.gains[0].abs()
    logs = torch.log(torch.tensor(module.lambdas, dtype=torch.float64))
    log_l = torch.log(_clamped(module, lmbda)).reshape(())
    s = (logs[1:n - 1] < log_l).sum().reshape(1)  # the segment interpolation_point picks
    lo, hi = logs.index_select(0, s), logs.index_select(0, s + 1)  # tensor indexes: no data-dependent Python
    frac = ((log_l - lo) / (hi - lo)).clamp(0.0, 1.0)
    g0 = module.gains.index_select(0, s)[0].abs()
    g1 = module.gains.index_select(0, s + 1)[0].abs()
    return g0.pow((1.0 - frac).to(g0.dtype)) * g1.pow(frac.to(g0.dtype))


# class (module.qualname) -> tensor form of its scale()
KNOWN: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "vrtk_plugins.bm.layer.BitrateModulator": bm_scale,
    "vrtk_plugins.gain.layer.GainUnit": gain_scale,
}


def qualname(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def tensor_scale(path: str, module: RateModule) -> Callable[[torch.Tensor], torch.Tensor]:
    """The lambda-tensor form of ``module.scale``, or an ExportError naming the module."""
    own = getattr(module, "scale_for", None)
    if callable(own):
        return own
    known = KNOWN.get(qualname(module))
    if known is not None:
        return lambda lmbda: known(module, lmbda)
    raise ExportError(f"{path} ({qualname(module)}) computes its rate-dependent values in Python, so the rate "
                      "cannot be a graph input: export at one rate with --lambda L, or give the class a "
                      "scale_for(lmbda: Tensor) -> Tensor method")


def rate_modules(net: nn.Module) -> list[tuple[str, RateModule]]:
    return [(name, m) for name, m in net.named_modules() if isinstance(m, RateModule)]


def make_rate_input(net: nn.Module) -> RateBox:
    """Make every rate module of ``net`` (a copy made for export) read lambda from the returned box."""
    box = RateBox()
    for path, module in rate_modules(net):
        if not hasattr(type(module), "scale"):
            raise ExportError(f"{path} ({qualname(module)}) is a rate module without a scale() vector: export at "
                              "one rate with --lambda L")
        fn = tensor_scale(path, module)

        def scale(fn=fn):
            if box.value is None:
                raise ExportError("internal: no lambda in the graph's rate box")
            return fn(box.value)

        object.__setattr__(module, "scale", scale)  # shadows the class's method on this copy only
    return box
