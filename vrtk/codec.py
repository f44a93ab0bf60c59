"""Coding images with a wrapped model: padding to the model's multiple, rate set around each call."""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from vrtk.rate import use_rate

PAD_MULTIPLE = 64  # g_a downsamples by 16 and h_a by 4 in every CompressAI image architecture
PIXEL_SCALE = 255**2  # CompressAI's RateDistortionLoss: lambda * 255^2 * MSE


def pad(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad (N, C, H, W) on all sides to a multiple, as CompressAI's eval does; returns the padding to undo."""
    from compressai.ops import compute_padding

    h, w = x.shape[-2:]
    padding, unpadding = compute_padding(h, w, min_div=multiple)
    return F.pad(x, padding, mode="constant", value=0), unpadding


def unpad(x: torch.Tensor, unpadding) -> torch.Tensor:
    return F.pad(x, unpadding)


def straight_through_round(values: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """``round(values - offset) + offset`` as the coder rounds, with the identity's gradient (straight through)."""
    centred = values - offset if offset is not None else values
    rounded = centred + (torch.round(centred) - centred).detach()
    return rounded + offset if offset is not None else rounded


@contextlib.contextmanager
def method_patched(objects: Iterable, name: str, function) -> Iterator[None]:
    """Within the block, each object's method ``name`` is ``function`` bound to it (an instance attribute; after it,
    the instance attribute that was there before, if any, is back): how vrtk changes what CompressAI's entropy
    models do without editing their classes, nesting with other such patches in either order."""
    objects = list(objects)
    previous = [obj.__dict__.get(name, _ABSENT) for obj in objects]
    for obj in objects:
        setattr(obj, name, types.MethodType(function, obj))
    try:
        yield
    finally:
        for obj, before in zip(objects, previous, strict=True):
            if before is _ABSENT:
                delattr(obj, name)
            else:
                setattr(obj, name, before)


_ABSENT = object()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.clamp(0, 1), b.clamp(0, 1)).item()
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


@torch.no_grad()
def estimate_rd(net, images: list[torch.Tensor], lmbda: float | None, registry=None,
                device: torch.device | str = "cpu") -> tuple[float, float]:
    """Mean likelihood bpp and mean PSNR over full images (forward pass, no entropy coding)."""
    bpps, psnrs = [], []
    for img in images:
        x = img[None].to(device)
        xp, unpadding = pad(x)
        with use_rate(net, lmbda, registry):
            out = net(xp)
        bits = sum(torch.log2(lk).sum().neg() for lk in out["likelihoods"].values())
        bpps.append(float(bits) / (x.shape[-1] * x.shape[-2]))
        psnrs.append(psnr(unpad(out["x_hat"], unpadding), x))
    return sum(bpps) / len(bpps), sum(psnrs) / len(psnrs)
