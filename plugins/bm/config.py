"""Settings of the bit-rate modulator plugin."""

from __future__ import annotations

from dataclasses import dataclass, field

from vrtk.zoo import COMPRESSAI_MSE_LAMBDAS


@dataclass
class BMConfig:
    """``lambdas``: the rates the model is trained for (its range is what users may ask for)."""

    lambdas: list[float] = field(default_factory=lambda: list(COMPRESSAI_MSE_LAMBDAS))
    hidden: int = 50  # width of the MLP lambda -> per-channel scale (Yin et al. use ~50)
    encoder: str = "g_a"  # the bm goes after this module ...
    decoder: str = "g_s"  # ... and the inverse bm before this one
    channels: int | None = None  # latent channels; None = the last convolution of `encoder`
