"""vrtk plugin ``gain``: gain units on y (and optionally z), continuous rate by exponential interpolation.

Default layout on a hyperprior model (``hyper=True``, ``hyper_input=ungained``, CompressAI's gain hyperprior)::

    g_a -> Sequential(g_a, GainUnit m_y)              y_g = g_a(x) * m_y       (what the entropy coder codes)
    h_a -> Sequential(Ungain, h_a, GainUnit m_z)      z_g = h_a(y_g / m_y) * m_z
    h_s -> Sequential(GainUnit m_z_inv, h_s)
    g_s -> Sequential(GainUnit m_y_inv, g_s)

With ``hyper_input=gained`` the ``Ungain`` is left out and h_a reads y_g (``h_a -> Sequential(h_a, m_z)``).
"""

from __future__ import annotations

from torch import nn
from vrtk_plugins.gain.config import GainConfig, upgrade_saved
from vrtk_plugins.gain.layer import GainUnit, Ungain

from vrtk.hookspecs import hookimpl
from vrtk.injection import Site, get_submodule, replace_submodule
from vrtk.modulation import LatentModulationInjector, Placement, set_rate_on


class GainInjector(LatentModulationInjector):
    name = "gain"
    description = "gain units (Cui et al. 2021): n gain/inverse-gain vectors, interpolated between lambdas"
    config_class = GainConfig

    def make_config(self, values: dict | None = None) -> GainConfig:
        return super().make_config(upgrade_saved(dict(values or {})))

    def placements(self, config: GainConfig) -> list[Placement]:
        places = [Placement("y", config.encoder, config.decoder)]
        if config.hyper:
            places.append(Placement("z", config.hyper_encoder, config.hyper_decoder))
        return places

    def make_modulator(self, config: GainConfig, channels: int, latent: str, role: str) -> GainUnit:
        return GainUnit(channels, config.lambdas, role)

    def plan(self, model: nn.Module, config: GainConfig) -> list[str]:
        paths = super().plan(model, config)
        if config.hyper_input == "ungained" and config.hyper_encoder not in paths:
            get_submodule(model, config.hyper_encoder)
            paths.append(config.hyper_encoder)
        return paths

    def inject(self, model: nn.Module, config: GainConfig) -> list[Site]:
        sites = super().inject(model, config)
        if config.hyper_input == "ungained":
            sites = self._ungain_hyper_input(model, config, sites)
        return sites

    def _ungain_hyper_input(self, model: nn.Module, config: GainConfig, sites: list[Site]) -> list[Site]:
        """Put an :class:`Ungain` first in the hyper-encoder; the z gain site (if any) moves one index on."""
        gain = get_submodule(model, f"{config.encoder}.1")
        encoder = get_submodule(model, config.hyper_encoder)
        parts = list(encoder) if config.hyper else [encoder]  # with hyper: Sequential(h_a, m_z) made just now
        replace_submodule(model, config.hyper_encoder, nn.Sequential(Ungain(gain), *parts))
        moved = f"{config.hyper_encoder}.1"
        sites = [Site(f"{config.hyper_encoder}.2", s.plugin, s.kind, s.added_params) if s.path == moved else s
                 for s in sites]
        return [*sites, Site(f"{config.hyper_encoder}.0", self.name, "ungain-y", 0)]


@hookimpl
def vrtk_register_injectors(register):
    register(GainInjector())


@hookimpl
def vrtk_set_rate(model, lmbda):
    return set_rate_on(model, GainUnit, lmbda)
