"""How training stands in for rounding: CompressAI's additive noise, or noise for the rate and rounding for the decoder.

CompressAI trains with ``y + U(-0.5, 0.5)`` everywhere: the rate is estimated on the noisy latent and the decoder
learns to reconstruct from it. At test time the decoder gets ``round(y - mean) + mean`` instead, a latent it never
saw in training. ``mixed`` keeps the noisy latents for the likelihoods and hands the decoders -- ``h_s`` for
``z``, ``g_s`` for ``y`` -- exactly the rounded latents they decode at test time, with a straight-through gradient
(so ``y``'s scales, too, come from the rounded ``z``, as when decoding). As in Minnen & Singh 2020, "Channel-wise
autoregressive entropy models for learned image compression". Not in Yin et al.; opt-in (``quantization=mixed``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import nn

from vrtk.codec import method_patched, straight_through_round
from vrtk.errors import RecipeError

QUANTIZATIONS = ("noise", "mixed")


def check_quantization(name: str) -> None:
    if name not in QUANTIZATIONS:
        raise RecipeError(f"unknown quantization {name!r}; choose one of {', '.join(QUANTIZATIONS)}")


def check_mixed_supported(net: nn.Module) -> None:
    """``mixed`` replaces what the entropy models' forward returns, which is the decoder's input only where the
    architecture's forward is CompressAI's factorized or hyperprior one (an autoregressive context quantizes
    separately)."""
    from vrtk.export.view import coding_of

    if coding_of(net) is None:
        raise RecipeError(f"quantization=mixed supports CompressAI's factorized and hyperprior architectures; "
                          f"{type(net).__name__} passes its latents to the decoder another way (e.g. an "
                          "autoregressive context): use quantization=noise")


@contextlib.contextmanager
def training_quantization(net: nn.Module, name: str) -> Iterator[None]:
    """Within the block, ``net``'s entropy models quantize as ``name`` says (``noise``: CompressAI's own)."""
    if name == "noise":
        yield
        return
    models = [m for m in net.modules() if isinstance(m, (EntropyBottleneck, GaussianConditional))]
    with method_patched(models, "forward", _mixed_forward):
        yield


def _mixed_forward(self, inputs, *args, **kwargs):
    """The entropy model's own forward for the likelihoods; the decoder's input rounded as the coder rounds it."""
    outputs, likelihoods = type(self).forward(self, inputs, *args, **kwargs)
    call = inspect.signature(type(self).forward).bind(self, inputs, *args, **kwargs).arguments
    training = call.get("training")
    if not (self.training if training is None else training):
        return outputs, likelihoods
    if isinstance(self, EntropyBottleneck):  # the coder rounds z around the bottleneck's medians
        offset = self._get_medians().detach().reshape(1, -1, *([1] * (inputs.dim() - 2)))
    else:  # and y around the conditional's means, if it has any
        offset = call.get("means")
    return straight_through_round(inputs, offset), likelihoods
