"""Example third-party vrtk plugin: a squeeze-excitation gate before the decoder, identity at initialisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vrtk.hookspecs import hookimpl
from vrtk.injection import Adapter, Injector, Site, get_submodule, replace_submodule


@dataclass
class SEConfig:
    target: str = "g_s"


class SEGate(Adapter):
    """y * (1 + tanh(W GAP(y) + b)) then the wrapped decoder; W, b start at zero so nothing changes at first."""

    plugin_name = "se"

    def __init__(self, base_layer: nn.Module, channels: int):
        super().__init__()
        self.base_layer = base_layer
        self.excite = nn.Linear(channels, channels)
        nn.init.zeros_(self.excite.weight)
        nn.init.zeros_(self.excite.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        scale = 1 + torch.tanh(self.excite(y.mean(dim=(-2, -1))))
        return self.base_layer(y * scale[..., None, None])


def _in_channels(module: nn.Module) -> int:
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            return layer.in_channels
    raise ValueError("no convolution found in the target module")


class SEInjector(Injector):
    name = "se"
    description = "squeeze-excitation gate on the decoder input (example third-party plugin)"
    config_class = SEConfig

    def plan(self, model, config):
        get_submodule(model, config.target)
        return [config.target]

    def inject(self, model, config):
        decoder = get_submodule(model, config.target)
        gate = SEGate(decoder, _in_channels(decoder))
        replace_submodule(model, config.target, gate)
        return [Site(config.target, self.name, "se-gate", gate.added_param_count())]


@hookimpl
def vrtk_register_injectors(register):
    register(SEInjector())
