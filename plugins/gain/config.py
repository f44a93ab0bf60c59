"""Settings of the gain-unit plugin."""

from __future__ import annotations

from dataclasses import dataclass, field

from vrtk.zoo import COMPRESSAI_MSE_LAMBDAS


@dataclass
class GainConfig:
    """One gain vector (and one inverse gain vector) per lambda in ``lambdas``; rates in between interpolate."""

    lambdas: list[float] = field(default_factory=lambda: list(COMPRESSAI_MSE_LAMBDAS))
    hyper: bool = True  # gains on the hyper-latent z as well (Cui et al.; CompressAI's GainHyperLatentCodec)
    encoder: str = "g_a"
    decoder: str = "g_s"
    hyper_encoder: str = "h_a"
    hyper_decoder: str = "h_s"
    channels: int | None = None  # channels of y; None = the last convolution of `encoder`
