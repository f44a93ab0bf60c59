"""What one input may cost to code: peak memory of coding an image, and what entropy-coded strings can carry.

A hostile .vrtk file or image is small and asks for big work: a 363-byte file whose header claims 4096x4096, a
1x64,000,000 image padded to 64 rows. Two checks run before anything large is allocated:

* :func:`check_string_capacity` -- a header's latent shape must fit the bytes of its strings. rANS spends at least
  ``log2(2**16 / f)`` bits on a symbol whose frequency is ``f`` (of 2**16), so the hyper-latent ``z`` (one symbol
  per channel and position, each channel with its own table) needs at least ``positions * sum(min bits of each
  channel's table)`` bits. This is a lower bound for any valid stream, so valid files always pass.
* :func:`check_memory` -- the peak memory of coding an image, estimated from a probe before allocating, must fit
  the budget (vrtk/limits.py: ``VRTK_MEMORY_BUDGET``).

"""

from __future__ import annotations

import math
import weakref

import torch

from vrtk.codec import PAD_MULTIPLE
from vrtk.errors import BitstreamError, ResourceError
from vrtk.limits import MEMORY_BUDGET_ENV, human_bytes, memory_budget
from vrtk.rate import use_rate

# Peak memory over the largest layer's input + output (per padded pixel) measured 1.7-3.7 at 1024-2048 px across
# the CompressAI architectures, bm/gain/ecg, encode and decode (N=8..128); at 512 px fixed costs add up to 4.3x.
# 4x plus a fixed 64 MiB stayed above every measured peak.
ACTIVATION_FACTOR = 4
FIXED_OVERHEAD = 64 * 2**20
# Refinement (vrtk.refine) keeps every layer's output for backward, plus gradients: 4x their sum stayed above the
# peaks measured with the default model (768x512: 437 MB grown, 513 estimated; 1536x1024: 1093 MB, 1864 estimated).
REFINE_FACTOR = 4
PROBE_SIDE = 64  # the smallest padded image: the probe forward pass is cheap
RANS_PRECISION = 16  # CompressAI's rANS coder: symbol frequencies are out of 2**16
RANS_SLACK_BITS = 64  # the coder's 64-bit state holds up to this many bits beyond the bytes it has written
GUARD_BYTES_PER_SYMBOL = 8  # zero bytes appended per latent symbol before decoding (see vrtk.api._guard_strings)
_probe_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net -> (peak, stored) bytes per padded pixel


def activation_bytes_per_pixel(net: torch.nn.Module, lmbda: float | None = None, registry=None) -> float:
    """The largest input + output of any layer per padded pixel, from one forward pass on a 64x64 probe (cached
    per network). A network whose forward pass cannot run on the probe gets a conservative bound instead: its widest
    layer at full resolution."""
    return _probe(net, lmbda, registry)[0]


def stored_activation_bytes_per_pixel(net: torch.nn.Module, lmbda: float | None = None, registry=None) -> float:
    """Every layer's output per padded pixel, summed: what a backward pass keeps (latent refinement, vrtk.refine)."""
    return _probe(net, lmbda, registry)[1]


def _probe(net: torch.nn.Module, lmbda: float | None, registry) -> tuple[float, float]:
    cached = _probe_cache.get(net)
    if cached is not None:
        return cached
    peak, total = 0, 0

    def hook(_module, inputs, output):
        nonlocal peak, total
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        out_bytes = sum(t.numel() * t.element_size() for t in outputs if isinstance(t, torch.Tensor))
        peak = max(peak, out_bytes + sum(t.numel() * t.element_size() for t in inputs if isinstance(t, torch.Tensor)))
        total += out_bytes

    leaves = [m for m in net.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        device = next(iter(net.parameters())).device
        with torch.no_grad(), use_rate(net, lmbda, registry):
            net(torch.zeros(1, 3, PROBE_SIDE, PROBE_SIDE, device=device))
        per_pixel, stored = peak / PROBE_SIDE**2, total / PROBE_SIDE**2
    except Exception:  # noqa: BLE001 - any architecture may fail on a probe; the bound below is then used
        per_pixel = 2 * 4 * max((getattr(m, "out_channels", 0) or 0 for m in leaves), default=512)
        stored = len(leaves) * per_pixel
    finally:
        for h in handles:
            h.remove()
    per_pixel = max(per_pixel, 3 * 4)  # never less than the image itself
    _probe_cache[net] = (per_pixel, max(stored, per_pixel))
    return _probe_cache[net]


def padded_pixels(width: int, height: int) -> int:
    return -(-height // PAD_MULTIPLE) * PAD_MULTIPLE * (-(-width // PAD_MULTIPLE) * PAD_MULTIPLE)


def guard_bytes(net: torch.nn.Module, width: int, height: int) -> int:
    """The zero bytes appended to each string before decoding: 8 per symbol of the largest latent (M channels at
    1/16 of the padded size), so CompressAI's rANS decoder stays inside its buffer on damaged data."""
    channels = getattr(net, "M", None)
    channels = channels if isinstance(channels, int) and channels > 0 else 512
    return 64 + GUARD_BYTES_PER_SYMBOL * channels * padded_pixels(width, height) // 256


def coding_bytes(net: torch.nn.Module, width: int, height: int, lmbda: float | None = None, registry=None,
                 groups: int = 0, refining: bool = False) -> int:
    """Estimated peak memory of coding a ``width`` x ``height`` image (decode: plus ``groups`` guarded strings;
    ``refining``: plus the activations and gradients of refinement's backward passes)."""
    per_pixel = ACTIVATION_FACTOR * activation_bytes_per_pixel(net, lmbda, registry)
    if refining:
        per_pixel += REFINE_FACTOR * stored_activation_bytes_per_pixel(net, lmbda, registry)
    return int(per_pixel * padded_pixels(width, height) + FIXED_OVERHEAD + groups * guard_bytes(net, width, height))


def check_memory(net: torch.nn.Module, width: int, height: int, what: str, lmbda: float | None = None,
                 registry=None, budget: int | None = None, groups: int = 0, refining: bool = False) -> None:
    """Refuse, before allocating, to code an image whose estimated peak memory is over the budget."""
    budget = memory_budget(budget)
    if ACTIVATION_FACTOR * 12 * padded_pixels(width, height) > budget:  # over budget whatever the network: no probe
        need = ACTIVATION_FACTOR * 12 * padded_pixels(width, height)
    else:
        need = coding_bytes(net, width, height, lmbda, registry, groups, refining)
    if need > budget:
        raise ResourceError(f"{what} a {width}x{height} image with this model needs about {human_bytes(need)} of "
                            f"memory, more than the budget of {human_bytes(budget)}; set {MEMORY_BUDGET_ENV} "
                            "(e.g. 16G) on a machine that has it, or use a smaller image")


# -- what entropy-coded strings can carry -------------------------------------------------------------------------
def min_bits_per_symbol(quantized_cdf: torch.Tensor, cdf_length: torch.Tensor) -> torch.Tensor:
    """For each table row: the fewest bits rANS can spend on one of its symbols, ``log2(2**16 / largest f)``."""
    cdf = quantized_cdf.to(torch.int64)
    freq = cdf[:, 1:] - cdf[:, :-1]
    valid = torch.arange(freq.shape[1], device=freq.device)[None] < (cdf_length.to(torch.int64)[:, None] - 1)
    largest = torch.where(valid, freq, torch.zeros_like(freq)).amax(dim=1).clamp(1, 2**RANS_PRECISION)
    return RANS_PRECISION - torch.log2(largest.double())


def hyper_latent_bottleneck(net: torch.nn.Module):
    """The EntropyBottleneck that codes the last string group at the header's latent shape, for CompressAI's own
    architectures (FactorizedPrior codes y with it; the hyperprior models code z with it); else None."""
    from compressai.entropy_models import EntropyBottleneck

    eb = getattr(net, "entropy_bottleneck", None)
    if not isinstance(eb, EntropyBottleneck) or not type(net).__module__.startswith("compressai.models"):
        return None
    if eb._quantized_cdf.numel() == 0 or eb._cdf_length.numel() != eb._quantized_cdf.shape[0]:
        return None
    return eb


def check_string_capacity(net: torch.nn.Module, shape: tuple[int, ...], strings: list[list[bytes]],
                          width: int, height: int) -> None:
    """Refuse a header whose latent shape needs more bits than its strings hold (see the module docstring)."""
    eb = hyper_latent_bottleneck(net)
    if eb is None or len(shape) != 2 or not strings or len(strings[-1]) != 1:
        return
    per_position = float(min_bits_per_symbol(eb._quantized_cdf, eb._cdf_length).sum())
    # 0.99: rANS rounds each step and renormalises by whole words; the loss per symbol is under 2**-15 of its cost
    needed = 0.99 * per_position * shape[0] * shape[1]
    have = 8 * len(strings[-1][0]) + RANS_SLACK_BITS
    if needed > have:
        raise BitstreamError(f"damaged .vrtk file: a {width}x{height} image needs at least "
                             f"{math.ceil((needed - RANS_SLACK_BITS) / 8)} bytes of entropy-coded hyper-latent with "
                             f"this model, and the file holds {len(strings[-1][0])}")
