"""vrtk plugin ``gain``: gain units on y (and optionally z), continuous rate by exponential interpolation."""

from __future__ import annotations

from vrtk_plugins.gain.config import GainConfig
from vrtk_plugins.gain.layer import GainUnit

from vrtk.hookspecs import hookimpl
from vrtk.modulation import LatentModulationInjector, Placement, set_rate_on


class GainInjector(LatentModulationInjector):
    name = "gain"
    description = "gain units (Cui et al. 2021): n gain/inverse-gain vectors, interpolated between lambdas"
    config_class = GainConfig

    def placements(self, config: GainConfig) -> list[Placement]:
        places = [Placement("y", config.encoder, config.decoder)]
        if config.hyper:
            places.append(Placement("z", config.hyper_encoder, config.hyper_decoder))
        return places

    def make_modulator(self, config: GainConfig, channels: int, latent: str, role: str) -> GainUnit:
        return GainUnit(channels, config.lambdas, role)


@hookimpl
def vrtk_register_injectors(register):
    register(GainInjector())


@hookimpl
def vrtk_set_rate(model, lmbda):
    return set_rate_on(model, GainUnit, lmbda)
