"""Settings of the gain-unit plugin."""

from __future__ import annotations

from dataclasses import dataclass, field

from vrtk.errors import PluginError
from vrtk.zoo import COMPRESSAI_MSE_LAMBDAS

HYPER_INPUTS = ("ungained", "gained")
# Every field a saved config held before ``hyper_input`` existed (all of them were there from the start).
FIELDS_BEFORE_HYPER_INPUT = frozenset({"lambdas", "hyper", "encoder", "decoder", "hyper_encoder", "hyper_decoder",
                                       "channels"})


def upgrade_saved(values: dict) -> dict:
    """A model folder saved before ``hyper_input`` existed names every older field and was trained with h_a
    reading the gained y: it loads that way, so its weights mean what they meant."""
    if FIELDS_BEFORE_HYPER_INPUT <= set(values) and "hyper_input" not in values:
        return {**values, "hyper_input": "gained"}
    return values


@dataclass
class GainConfig:
    """One gain vector (and one inverse gain vector) per lambda in ``lambdas``; rates in between interpolate.

    ``hyper_input``: what h_a reads. ``ungained`` (default): g_a's output before the gain, as CompressAI's
    ``GainHyperpriorLatentCodec`` does; the rate then reaches the hyperprior only through the z gains, so keep
    ``hyper`` on. ``gained``: y * m, the form of several re-implementations of Cui et al. and of vrtk before
    this option existed.
    """

    lambdas: list[float] = field(default_factory=lambda: list(COMPRESSAI_MSE_LAMBDAS))
    hyper: bool = True  # gains on the hyper-latent z as well (Cui et al.; CompressAI's GainHyperLatentCodec)
    hyper_input: str = "ungained"
    encoder: str = "g_a"
    decoder: str = "g_s"
    hyper_encoder: str = "h_a"
    hyper_decoder: str = "h_s"
    channels: int | None = None  # channels of y; None = the last convolution of `encoder`

    def __post_init__(self):
        if self.hyper_input not in HYPER_INPUTS:
            raise PluginError(f"gain: hyper_input must be one of {HYPER_INPUTS}, not {self.hyper_input!r}")
