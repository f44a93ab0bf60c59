"""What work may cost: the memory budget, refusing to build networks over it, and naming failed allocations.

The budget is ``VRTK_MEMORY_BUDGET`` (e.g. ``8G``, ``512M``, bytes), default :data:`DEFAULT_MEMORY_BUDGET`. An
allocation that fails anyway (another process took the memory) is reported as a :class:`ResourceError` by
:func:`allocation_failures`, never as a damaged file. What coding one image or one bitstream may cost is estimated
in vrtk/coding_limits.py, which sits above the codec; this module sits below the model zoo, which uses it to refuse
oversized builds.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

from vrtk.errors import ResourceError, VrtkError

MEMORY_BUDGET_ENV = "VRTK_MEMORY_BUDGET"
DEFAULT_MEMORY_BUDGET = 8 * 2**30  # a third of a 24 GB machine: room for the OS, the model and a training run

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


# -- the memory budget ------------------------------------------------------------------------------------------
def parse_size(text: str) -> int:
    """``8G``, ``512MiB``, ``1.5g`` or a number of bytes -> bytes (units are powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise VrtkError(f"{text!r} is not a size: give bytes or a number with K, M, G or T (e.g. 8G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def memory_budget(override: int | str | None = None) -> int:
    """Bytes one encode or decode may use: ``override``, else ``VRTK_MEMORY_BUDGET``, else the default."""
    if override is not None:
        value = override if isinstance(override, int) else parse_size(override)
    elif os.environ.get(MEMORY_BUDGET_ENV, "").strip():
        try:
            value = parse_size(os.environ[MEMORY_BUDGET_ENV])
        except VrtkError as exc:
            raise VrtkError(f"{MEMORY_BUDGET_ENV}: {exc}") from None
    else:
        value = DEFAULT_MEMORY_BUDGET
    if value <= 0:
        raise VrtkError(f"the memory budget must be positive, got {value}")
    return value


def human_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


PROBE_WIDTH = 16  # the widest size a scaled-down build uses to count parameters


def check_build_memory(factory, kwargs: dict, what: str, budget: int | None = None) -> None:
    """Refuse to build a network whose parameters would not fit the budget, counted on a scaled-down copy.

    Parameters of a convolutional codec grow at most with the square of its widths, so building with every size
    divided by ``f`` (the widest at 16) and multiplying its parameter count by ``f**2`` bounds the real count
    from above, at the cost of a tiny build. Sizes that are already small are built for real (nothing to save)."""
    sizes = {k: v for k, v in kwargs.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0}
    widest = max(sizes.values(), default=0)
    if widest <= PROBE_WIDTH * 4:
        return
    factor = widest / PROBE_WIDTH
    small = {**kwargs, **{k: max(1, round(v / factor)) for k, v in sizes.items()}}
    try:
        probe = factory(**small)
    except Exception:  # noqa: BLE001 - an architecture that cannot be scaled down is built as asked
        return
    params = sum(p.numel() for p in probe.parameters()) + sum(b.numel() for b in probe.buffers())
    need = 2 * 4 * params * factor**2  # float32 weights, and as much again while they are initialised
    budget = memory_budget(budget)
    if need > budget:
        raise ResourceError(f"building {what} needs about {human_bytes(need)} for its parameters, more than the "
                            f"memory budget of {human_bytes(budget)} ({MEMORY_BUDGET_ENV})")


def is_allocation_failure(exc: BaseException) -> bool:
    """MemoryError, torch's out-of-memory errors, and the CPU allocator's 'can't allocate memory'."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(s in text for s in (
        "can't allocate memory", "cannot allocate memory", "not enough memory", "out of memory"))


@contextlib.contextmanager
def allocation_failures(what: str) -> Iterator[None]:
    """Turn a failed allocation inside the block into a ResourceError that says what ran out."""
    try:
        yield
    except Exception as exc:
        if not is_allocation_failure(exc):
            raise
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ResourceError(f"out of memory while {what} ({first}); free memory or lower the work "
                            f"(a smaller image, or {MEMORY_BUDGET_ENV} to refuse such work early)") from None
