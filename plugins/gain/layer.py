"""Gain units (Cui et al., "Asymmetric Gained Deep Image Compression With Continuous Rate Adaptation", CVPR 2021).

    gains m_1..m_n (one C-vector per trained lambda, initialised to 1), inverse gains likewise
    lambda between lambda_s and lambda_{s+1}:  l = (log lambda - log lambda_s) / (log lambda_{s+1} - log lambda_s)
    m(lambda) = |m_s|^(1-l) * |m_{s+1}|^l      (exponential interpolation: continuous rate)

The inverse gains are separate parameters (the asymmetric pair of the paper), not 1/m.

Which y the hyper-encoder reads (``hyper_input``): CompressAI's ``GainHyperpriorLatentCodec`` (its implementation of
Cui et al.) gains y only on its way to the entropy coder, and h_a reads the ungained y. vrtk puts the gain after
g_a, so every consumer of g_a's output sees the gained y; :class:`Ungain` in front of h_a divides the gain back
out (the default, ``ungained``). ``gained`` leaves it out: h_a reads y * m, as many re-implementations do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vrtk.injection import Adapter
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


class Ungain(Adapter):
    """In front of h_a: y_gained / m(lambda), with m the y gain unit after g_a, so h_a reads g_a's own output.

    It owns no parameters and keeps no copy of the gain unit (a plain reference, so the state_dict holds each
    gain vector once); the rate set on that unit is the rate used here.
    """

    plugin_name = "gain"

    def __init__(self, gain: GainUnit):
        super().__init__()
        self._gain = (gain,)  # a tuple: not registered as a submodule, not saved twice

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        vector = self._gain[0].scale().to(dtype=y.dtype, device=y.device)
        return y / vector.view(1, -1, *([1] * (y.dim() - 2)))
