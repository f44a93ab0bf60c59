"""The bit-rate modulator (Yin et al., after Yang et al.'s modulated autoencoder).

    bm(lambda)  = exp(W2 ReLU(W1 t + b1) + b2)     t = log(lambda) normalised to [-1, 1] over the range
    y_mod       = g_a(x) * bm(lambda)              last step of the encoder: the hyperprior sees y_mod
    x_hat       = g_s(y_hat * ibm(lambda))         ibm: a second, learned MLP of the same form

W2 and b2 start at zero, so bm = ibm = 1 and the wrapped model starts as exactly the base model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vrtk.modulation import ChannelModulator, normalised_log_lambda


class BitrateModulator(ChannelModulator):
    """bm (role ``modulate``) or ibm (role ``demodulate``): one positive scale per latent channel."""

    plugin_name = "bm"

    def __init__(self, channels: int, lambdas: Sequence[float], role: str, hidden: int = 50):
        super().__init__(channels, lambdas, role)
        self.hidden = nn.Linear(1, int(hidden))
        self.out = nn.Linear(int(hidden), self.channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def scale(self) -> torch.Tensor:
        t = normalised_log_lambda(self.require_rate(), self.lambdas)
        inp = torch.full((1, 1), t, dtype=self.hidden.weight.dtype, device=self.hidden.weight.device)
        return torch.exp(self.out(torch.relu(self.hidden(inp))))[0]
