"""Distillation from the model a run starts from: a recovery tool for plugins that remove work (issue 15).

A gating plugin (ECG) fine-tuned with R + lambda * D alone learns to live with its gates from the images only. The
model the run started from -- the same base without the plugins this run adds, at the same rate -- is a teacher
whose reconstruction and latent say what the student should still compute. Two terms, both off by default (the
paper has neither):

* ``distill``: ``distill * lambda * 255^2 * MSE(x_hat, x_hat_teacher)``, scaled like CompressAI's distortion term
  so that ``distill=1`` weighs the teacher's reconstruction as much as the image itself;
* ``distill_latent``: ``distill_latent * lambda * 255^2 * MSE(y, y_teacher)`` on the encoder's output ``g_a(x)``
  (any CompressAI model has ``g_a``), a feature term that keeps the latent the entropy model was trained on.

The teacher is built from the run's ``model`` exactly as the student is, without the run's ``plugins``; it is frozen
and runs without gradients.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from vrtk.codec import PIXEL_SCALE
from vrtk.errors import RecipeError
from vrtk.model import WrappedModel
from vrtk.rate import use_rate


@contextmanager
def _captured_latent(net: nn.Module, into: dict):
    """Record ``net.g_a``'s output in ``into["y"]`` while the block runs."""
    encoder = getattr(net, "g_a", None)
    if encoder is None:
        raise RecipeError("distill_latent needs a model with an encoder g_a (every CompressAI model has one)")
    handle = encoder.register_forward_hook(lambda _m, _i, out: into.__setitem__("y", out))
    try:
        yield
    finally:
        handle.remove()


class Teacher:
    """The frozen starting model and the distillation terms against it."""

    def __init__(self, wrapped: WrappedModel, registry, device: torch.device, weight: float, latent_weight: float):
        if weight < 0 or latent_weight < 0:
            raise RecipeError(f"distill and distill_latent must be >= 0, not {weight} and {latent_weight}")
        self.net = wrapped.net.to(device).eval().requires_grad_(False)
        self.registry, self.weight, self.latent_weight = registry, weight, latent_weight

    @contextmanager
    def watching(self, student: nn.Module, seen: dict):
        """Capture the student's latent during its forward pass (only when the latent term is on)."""
        if self.latent_weight:
            with _captured_latent(student, seen):
                yield
        else:
            yield

    def terms(self, x: torch.Tensor, x_hat: torch.Tensor, student_seen: dict, lmbda: float) -> dict:
        """The distillation loss terms for one batch at one lambda (name -> scalar tensor)."""
        teacher_seen: dict = {}
        with torch.no_grad(), use_rate(self.net, lmbda, self.registry):
            if self.latent_weight:
                with _captured_latent(self.net, teacher_seen):
                    out = self.net(x)
            else:
                out = self.net(x)
        terms = {}
        scale = lmbda * PIXEL_SCALE
        if self.weight:
            terms["distill"] = self.weight * scale * F.mse_loss(x_hat.float(), out["x_hat"].float())
        if self.latent_weight:
            terms["distill_latent"] = self.latent_weight * scale * F.mse_loss(
                student_seen["y"].float(), teacher_seen["y"].float())
        return terms
