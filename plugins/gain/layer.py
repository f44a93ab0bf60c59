"""Gain units (Cui et al., "Asymmetric Gained Deep Image Compression With Continuous Rate Adaptation", CVPR 2021).

    gains m_1..m_n (one C-vector per trained lambda, initialised to 1), inverse gains likewise
    lambda between lambda_s and lambda_{s+1}:  l = (log lambda - log lambda_s) / (log lambda_{s+1} - log lambda_s)
    m(lambda) = |m_s|^(1-l) * |m_{s+1}|^l      (exponential interpolation: continuous rate)

The inverse gains are separate parameters (the asymmetric pair of the paper), not 1/m.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vrtk.modulation import ChannelModulator, interpolation_point


class GainUnit(ChannelModulator):
    """Gain (role ``modulate``) or inverse gain (role ``demodulate``) vectors for the configured lambdas."""

    plugin_name = "gain"

    def __init__(self, channels: int, lambdas: Sequence[float], role: str):
        super().__init__(channels, lambdas, role)
        self.gains = nn.Parameter(torch.ones(len(self.lambdas), self.channels))

    def scale(self) -> torch.Tensor:
        s, frac = interpolation_point(self.require_rate(), self.lambdas)
        if frac == 0.0 or len(self.lambdas) == 1:
            return self.gains[s].abs()
        return self.gains[s].abs().pow(1.0 - frac) * self.gains[s + 1].abs().pow(frac)
