"""vrtk plugin ``bm``: a bit-rate modulator after the encoder and its learned inverse before the decoder."""

from __future__ import annotations

from vrtk_plugins.bm.config import BMConfig
from vrtk_plugins.bm.layer import BitrateModulator

from vrtk.hookspecs import hookimpl
from vrtk.modulation import LatentModulationInjector, Placement, set_rate_on


class BMInjector(LatentModulationInjector):
    name = "bm"
    description = "bit-rate modulator: y * bm(lambda) after g_a, a learned inverse before g_s (Yin et al.)"
    config_class = BMConfig

    def placements(self, config: BMConfig) -> list[Placement]:
        return [Placement("y", config.encoder, config.decoder)]

    def make_modulator(self, config: BMConfig, channels: int, latent: str, role: str) -> BitrateModulator:
        return BitrateModulator(channels, config.lambdas, role, hidden=config.hidden)


@hookimpl
def vrtk_register_injectors(register):
    register(BMInjector())


@hookimpl
def vrtk_set_rate(model, lmbda):
    return set_rate_on(model, BitrateModulator, lmbda)
