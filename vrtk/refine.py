"""Encoder-side latent refinement: a few gradient steps on one image's latents to lower its rate-distortion cost.

The encoder ``g_a`` (and ``h_a``) maps every image to a good latent in one pass -- amortised inference -- but not
to the latent that minimises *this* image's ``R + lambda * 255^2 * MSE``. Refinement starts from the encoder's
``y`` (and ``z``) and runs Adam on them through the architecture's own forward pass, rounding with a
straight-through gradient, so each step's loss is the estimated cost of exactly what would be entropy coded; the
best step is kept (never worse than the encoder's own latent by that estimate). Only the encoder works harder: the
model, the decoder and the file format are unchanged, and a refined file decodes wherever an unrefined one does.

Not in Yin et al.; opt-in (``vrtk compress --refine STEPS``). The technique: Campos et al. 2019, "Content adaptive
optimization for neural image compression"; Yang et al. 2020, "Improving inference for neural image
compression" (its straight-through variant).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vrtk.codec import PIXEL_SCALE, method_patched, straight_through_round
from vrtk.errors import VrtkError

ENCODER_TRANSFORMS = ("g_a", "h_a")  # the transforms whose outputs are refined, where the coding calls them
DEFAULT_LR = 1e-2  # Adam on latents in units of quantisation bins; tuned on training photos (benchmarks/refine_tune.py)
MAX_STEPS = 10_000


@dataclass(frozen=True)
class RefineSettings:
    """``steps`` Adam steps at ``lr`` (decayed linearly to 0); ``lmbda`` the loss's lambda, None: the coding rate
    (variable-rate models) or the one lambda the model was trained for."""

    steps: int
    lr: float = DEFAULT_LR
    lmbda: float | None = None

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise VrtkError(f"refinement steps must be a whole number in 1..{MAX_STEPS}, got {self.steps!r}")
        for name in ("lr", "lmbda"):
            value = getattr(self, name)
            if value is None and name == "lmbda":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                                    and value > 0):
                raise VrtkError(f"refinement {name} must be a positive number, got {value!r}")


def as_settings(value) -> RefineSettings | None:
    """None, a number of steps, or settings."""
    if value is None or isinstance(value, RefineSettings):
        return value
    return RefineSettings(value)


def loss_lambda(wrapped, rate: float | None, settings: RefineSettings) -> float:
    """The lambda of the cost to lower: given, else the coding rate, else the model's one trained lambda."""
    if settings.lmbda is not None:
        return float(settings.lmbda)
    if rate is not None:
        return float(rate)
    if len(wrapped.lambdas) == 1:
        return float(wrapped.lambdas[0])
    from vrtk.zoo import COMPRESSAI_MSE_LAMBDAS

    quality = getattr(wrapped.base, "quality", None)
    if wrapped.base.weights == "zoo" and isinstance(quality, int) and 1 <= quality <= len(COMPRESSAI_MSE_LAMBDAS):
        return COMPRESSAI_MSE_LAMBDAS[quality - 1]
    raise VrtkError("refinement needs the lambda this model was trained for, and the model does not record one: "
                    "give it (--refine-lambda)")


def check_refinable(wrapped, view) -> None:
    """Refuse, before any work, a model refinement cannot serve (with the reason)."""
    if wrapped.metric != "mse":
        raise VrtkError(f"refinement lowers R + lambda * MSE; this model was trained for {wrapped.metric}")
    if view.coding is None:
        raise VrtkError(f"refinement runs CompressAI's factorized and hyperprior codings; {type(wrapped.net).__name__}"
                        " codes another way (e.g. an autoregressive context)")
    if view.backend != "torch":
        raise VrtkError(f"refinement needs gradients: use the torch backend, not {view.backend}")


def straight_through_rounding(entropy_models):
    """CompressAI's eval forward rounds (``dequantize``) with a zero gradient; round with the identity's instead."""
    return method_patched(entropy_models, "quantize", _straight_through_quantize)


def _straight_through_quantize(self, inputs, mode, means=None):
    if mode != "dequantize":
        return type(self).quantize(self, inputs, mode, means)
    return straight_through_round(inputs, means)


@contextlib.contextmanager
def frozen(net: torch.nn.Module) -> Iterator[None]:
    """No gradients for the weights while refining: they stay as they are, and backward skips their work."""
    wanted = [(p, p.requires_grad) for p in net.parameters()]
    for p, _ in wanted:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in wanted:
            p.requires_grad_(flag)


@dataclass
class Refined:
    latents: dict[str, torch.Tensor]  # transform name -> its refined output
    cost_before: float  # the encoder's own latents: estimated bpp + lambda * 255^2 * MSE
    cost_after: float
    best_step: int

    def to_record(self) -> dict:
        return {"cost_before": self.cost_before, "cost_after": self.cost_after, "best_step": self.best_step}


def encoder_latents(view, xp: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of the encoder transforms the coding calls, recorded from its own forward pass."""
    recorded: dict[str, torch.Tensor] = {}

    def recording(name):
        transform = getattr(view, name)

        def run(value):
            recorded[name] = transform(value)
            return recorded[name]
        return run

    names = [n for n in ENCODER_TRANSFORMS if n in view.transform_names]
    probe = view.with_transforms(**{n: recording(n) for n in names}, g_s=lambda y_hat: y_hat)  # g_s is not needed
    with torch.no_grad():
        probe.forward(xp)
    return recorded


def rd_cost(view, xp: torch.Tensor, x: torch.Tensor, unpadding, lmbda: float) -> torch.Tensor:
    """Estimated bits per image pixel + lambda * 255^2 * MSE of the clamped reconstruction inside the image."""
    from vrtk.codec import unpad

    out = view.forward(xp)
    pixels = x.shape[-1] * x.shape[-2]
    bits = sum(torch.log2(lk).sum().neg() for lk in out["likelihoods"].values())
    mse = F.mse_loss(unpad(out["x_hat"], unpadding).clamp(0, 1), x)
    return bits / pixels + lmbda * PIXEL_SCALE * mse


def refine(view, xp: torch.Tensor, x: torch.Tensor, unpadding, lmbda: float, settings: RefineSettings) -> Refined:
    """Adam on the encoder transforms' outputs (``view``'s rate already set); returns the best step's latents."""
    start = encoder_latents(view, xp)
    latents = {name: value.detach().clone().requires_grad_(True) for name, value in start.items()}
    trial = view.with_transforms(**{name: (lambda _input, v=value: v) for name, value in latents.items()})
    optimizer = torch.optim.Adam(list(latents.values()), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / settings.steps)
    entropy_models = [m for m in (view.entropy_bottleneck, getattr(view.net, "gaussian_conditional", None)) if m]
    best = None
    with frozen(view.net), straight_through_rounding(entropy_models), torch.enable_grad():
        for step in range(settings.steps + 1):
            cost = rd_cost(trial, xp, x, unpadding, lmbda)
            value = float(cost.detach())
            if not math.isfinite(value):
                break
            if best is None or value < best[0]:
                best = (value, step, {n: v.detach().clone() for n, v in latents.items()})
            if step == 0:
                first = value
            if step == settings.steps:
                break
            optimizer.zero_grad(set_to_none=True)
            cost.backward()
            optimizer.step()
            schedule.step()
    if best is None:
        return Refined(start, math.nan, math.nan, 0)
    return Refined(best[2], first, best[0], best[1])


class RefiningCodec:
    """A codec view whose ``compress`` refines each image's latents first; ``decompress`` is the view's own."""

    def __init__(self, wrapped, view, settings: RefineSettings):
        check_refinable(wrapped, view)
        self.wrapped, self.view, self.settings = wrapped, view, settings
        self.last: Refined | None = None

    def compress(self, xp: torch.Tensor, unpadding=None, rate: float | None = None) -> dict:
        """Code ``xp`` (padded; ``unpadding`` crops it back to the image the cost is measured on) at ``rate``,
        the lambda already set on the model."""
        x = xp if unpadding is None else F.pad(xp, unpadding)
        self.last = refine(self.view, xp, x, unpadding or (0, 0, 0, 0),
                           loss_lambda(self.wrapped, rate, self.settings), self.settings)
        fixed = self.view.with_transforms(**{n: (lambda _input, v=v: v) for n, v in self.last.latents.items()})
        with torch.no_grad():
            return fixed.compress(xp)

    def decompress(self, strings, shape, guard=None) -> dict:
        return self.view.decompress(strings, shape, guard=guard)
