"""The rate parameter: a Lagrange multiplier lambda, set on the model's modulators before each call.

CompressAI's compress/decompress take no rate argument, so :func:`use_rate` sets lambda on every plugin that
wants it (hook ``vrtk_set_rate``) for the duration of a call, and the .vrtk container carries it to the decoder.
Users may also name a rate by a continuous quality q in 1..n, mapped log-linearly onto the trained lambdas.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

from vrtk.errors import RateError


def quality_to_lambda(quality: float, lambdas: Sequence[float]) -> float:
    """q = 1..n over the sorted trained lambdas, log-linear in between (q = 2.5 is halfway in log lambda)."""
    lams = sorted(lambdas)
    n = len(lams)
    if n == 0:
        raise RateError("this model has no trained rate range")
    if not 1 <= quality <= n:
        raise RateError(f"quality {quality} is outside the trained range 1..{n}")
    if n == 1:
        return lams[0]
    if float(quality).is_integer():
        return lams[int(quality) - 1]  # exactly a trained lambda
    lo = min(int(math.floor(quality)), n - 1)
    frac = quality - lo
    return math.exp((1 - frac) * math.log(lams[lo - 1]) + frac * math.log(lams[lo]))


def check_lambda(lmbda: float, lambdas: Sequence[float], tolerance: float = 1e-6) -> float:
    lo, hi = min(lambdas), max(lambdas)
    if not (isinstance(lmbda, (int, float)) and math.isfinite(lmbda) and lmbda > 0):
        raise RateError(f"lambda must be a positive number, got {lmbda!r}")
    if lmbda < lo * (1 - tolerance) or lmbda > hi * (1 + tolerance):
        raise RateError(f"lambda {lmbda:g} is outside the trained range [{lo:g}, {hi:g}]")
    return float(lmbda)


def log_spaced(lo: float, hi: float, count: int) -> list[float]:
    if count == 1:
        return [math.sqrt(lo * hi)]
    return [math.exp(math.log(lo) + i * (math.log(hi) - math.log(lo)) / (count - 1)) for i in range(count)]


@contextlib.contextmanager
def use_rate(model, lmbda: float | None, registry=None) -> Iterator[None]:
    """Set ``lmbda`` on all rate-dependent plugin modules of ``model`` while the block runs."""
    if lmbda is None:
        yield
        return
    from vrtk.plugin_manager import get_registry

    registry = registry or get_registry()
    stack = model.__dict__.setdefault("_vrtk_rate_stack", [])  # nested blocks restore the outer rate
    stack.append(float(lmbda))
    registry.call("vrtk_set_rate", model=model, lmbda=float(lmbda))
    try:
        yield
    finally:  # a rate never outlives its block: a later call without one fails loudly instead
        stack.pop()
        registry.call("vrtk_set_rate", model=model, lmbda=stack[-1] if stack else None)
