"""Latent modulation: per-channel scales that depend on the rate, put around the latent by module replacement.

A modulator multiplies a latent by a positive vector computed from lambda; a demodulator undoes it before
the decoder. Plugins (``bm``, ``gain``, or a third party's) subclass :class:`ChannelModulator` for the vector
and :class:`LatentModulationInjector` for where it goes. The model is changed by replacing submodules only::

    g_a -> Sequential(g_a, Modulate)        y_mod = g_a(x) * m(lambda)   (the hyperprior sees y_mod)
    g_s -> Sequential(Demodulate, g_s)      x_hat = g_s(y_hat * m_inv(lambda))
    h_a -> Sequential(h_a, Modulate)        optional, for the hyper-latent z
    h_s -> Sequential(Demodulate, h_s)

so CompressAI's forward, compress and decompress all see the same modulation. The original module stays at
index 0 (encoder side) or 1 (decoder side), untouched: modules another plugin injected inside it (for example
gates before its convolutions) keep working, and unwrapping is just taking it back out.

A third modulator is a few lines (see tests/test_codec_roundtrip.py, which runs this one through real files)::

    class Tilt(ChannelModulator):                   # y * exp(t * p), t = normalised log lambda
        plugin_name = "tilt"
        def __init__(self, channels, lambdas, role):
            super().__init__(channels, lambdas, role)
            self.p = nn.Parameter(torch.zeros(channels))
        def scale(self):
            t = normalised_log_lambda(self.require_rate(), self.lambdas)
            return torch.exp((t if self.role == "modulate" else -t) * self.p)

    class TiltInjector(LatentModulationInjector):   # config_class: a dataclass with `lambdas`
        name, config_class = "tilt", TiltConfig
        def placements(self, config): return [Placement("y", "g_a", "g_s")]
        def make_modulator(self, config, channels, latent, role): return Tilt(channels, config.lambdas, role)

    @hookimpl
    def vrtk_register_injectors(register): register(TiltInjector())
    @hookimpl
    def vrtk_set_rate(model, lmbda): return set_rate_on(model, Tilt, lmbda)

The rate is set on every modulator before a call (hook ``vrtk_set_rate``; :func:`vrtk.rate.use_rate`) and is a
plain attribute, not a buffer: it is not part of the weights, so the model's fingerprint does not change with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vrtk.errors import PluginError, RateError
from vrtk.injection import Adapter, Injector, Site, get_submodule, replace_submodule

RANGE_TOLERANCE = 1e-6  # relative slack at the ends of the configured range (float round trips)


def normalised_log_lambda(lmbda: float, lambdas: Sequence[float]) -> float:
    """log(lambda) mapped linearly so the configured range is [-1, 1] (0 when there is a single lambda)."""
    lo, hi = math.log(min(lambdas)), math.log(max(lambdas))
    if hi == lo:
        return 0.0
    return 2.0 * (math.log(lmbda) - lo) / (hi - lo) - 1.0


def interpolation_point(lmbda: float, lambdas: Sequence[float]) -> tuple[int, float]:
    """(s, l) with lambda = lambdas[s]^(1-l) * lambdas[s+1]^l over the sorted lambdas, l in [0, 1]."""
    lams = list(lambdas)
    if len(lams) == 1:
        return 0, 0.0
    log_l = math.log(lmbda)
    for s in range(len(lams) - 1):
        lo, hi = math.log(lams[s]), math.log(lams[s + 1])
        if log_l <= hi or s == len(lams) - 2:
            frac = (log_l - lo) / (hi - lo)
            return s, min(max(frac, 0.0), 1.0)
    raise AssertionError("unreachable")


class RateModule(Adapter):
    """A module whose output depends on the rate; it refuses to run until a rate is set."""

    def __init__(self, lambdas: Sequence[float]):
        super().__init__()
        lams = sorted(float(x) for x in lambdas)
        if not lams or any(not (x > 0 and math.isfinite(x)) for x in lams):
            raise PluginError(f"{self.plugin_name}: lambdas must be positive numbers, got {list(lambdas)}")
        if len(set(lams)) != len(lams):
            raise PluginError(f"{self.plugin_name}: lambdas contain duplicates: {lams}")
        self.lambdas = lams
        self.lmbda: float | None = None

    def set_rate(self, lmbda: float | None) -> None:
        """Take the rate for the next calls; None clears it (the module then refuses to run)."""
        if lmbda is None:
            self.lmbda = None
            return
        lo, hi = self.lambdas[0], self.lambdas[-1]
        if not (math.isfinite(lmbda) and lo * (1 - RANGE_TOLERANCE) <= lmbda <= hi * (1 + RANGE_TOLERANCE)):
            raise RateError(f"lambda {lmbda:g} is outside the range this {self.plugin_name} module was "
                            f"configured for [{lo:g}, {hi:g}]")
        self.lmbda = min(max(float(lmbda), lo), hi)

    def require_rate(self) -> float:
        if self.lmbda is None:
            raise RateError(f"no rate is set on this {self.plugin_name} module: run the model inside "
                            f"vrtk.rate.use_rate(model, lmbda) with lambda in "
                            f"[{self.lambdas[0]:g}, {self.lambdas[-1]:g}]")
        return self.lmbda

    def extra_repr(self) -> str:
        return f"lambdas=[{self.lambdas[0]:g}..{self.lambdas[-1]:g}] x{len(self.lambdas)}, lmbda={self.lmbda}"


class ChannelModulator(RateModule):
    """Multiplies (N, C, ...) by a positive per-channel vector ``scale()`` that depends on the current rate.

    ``role`` is ``"modulate"`` (after an encoder) or ``"demodulate"`` (before a decoder); subclasses implement
    :meth:`scale` and may use the role to pick their forward or inverse parameters.
    """

    ROLES = ("modulate", "demodulate")

    def __init__(self, channels: int, lambdas: Sequence[float], role: str):
        super().__init__(lambdas)
        if role not in self.ROLES:
            raise PluginError(f"role must be one of {self.ROLES}, got {role!r}")
        if int(channels) <= 0:
            raise PluginError(f"{self.plugin_name}: channels must be positive, got {channels}")
        self.channels = int(channels)
        self.role = role

    def scale(self) -> torch.Tensor:
        """The (C,) vector for the current rate (call :meth:`require_rate` first)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise PluginError(f"{self.plugin_name} {self.role}: expected {self.channels} channels, got input of "
                              f"shape {tuple(x.shape)}")
        vector = self.scale().to(dtype=x.dtype, device=x.device)
        return x * vector.view(1, -1, *([1] * (x.dim() - 2)))


def set_rate_on(model: nn.Module, cls: type, lmbda: float) -> int:
    """Set ``lmbda`` on every ``cls`` module of ``model``; the body of a plugin's ``vrtk_set_rate``."""
    count = 0
    for module in model.modules():
        if isinstance(module, cls):
            module.set_rate(lmbda)
            count += 1
    return count


def output_channels(module: nn.Module) -> int | None:
    """Channels a transform produces: those of its last 2-D convolution in module order, not counting the
    internals of another plugin's adapter (only what it wraps as ``base_layer``)."""
    adapter_names = [n + "." for n, m in module.named_modules() if n and isinstance(m, Adapter)]
    found = None
    for name, sub in module.named_modules():
        if not isinstance(sub, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        if any(name.startswith(a) and not name.startswith(a + "base_layer") for a in adapter_names):
            continue
        found = sub.out_channels
    return found


@dataclass
class Placement:
    """One latent to modulate: the encoder path that produces it and the decoder path that consumes it."""

    latent: str  # "y" or "z": a label used in the site kind and passed to the plugin's factory
    encoder: str
    decoder: str


class LatentModulationInjector(Injector):
    """Puts a modulator after each ``placement.encoder`` and its inverse before ``placement.decoder``.

    Subclasses set ``name``/``config_class``, implement :meth:`placements` (usually from the config) and
    :meth:`make_modulator`. ``rate_range`` returns ``config.lambdas`` when the config has them.
    """

    rate_dependent = True

    def placements(self, config) -> list[Placement]:
        raise NotImplementedError

    def make_modulator(self, config, channels: int, latent: str, role: str) -> ChannelModulator:
        raise NotImplementedError

    def rate_range(self, config) -> list[float] | None:
        lambdas = getattr(config, "lambdas", None)
        return sorted(float(x) for x in lambdas) if lambdas else None

    def plan(self, model: nn.Module, config) -> list[str]:
        out = []
        for place in self.placements(config):
            get_submodule(model, place.encoder)
            get_submodule(model, place.decoder)
            out += [place.encoder, place.decoder]
        return out

    def channels_for(self, model: nn.Module, place: Placement, config) -> int:
        override = getattr(config, "channels", None) if place.latent == "y" else None
        channels = override or output_channels(get_submodule(model, place.encoder))
        if not channels:
            raise PluginError(f"{self.name}: cannot tell how many channels {place.encoder} produces; "
                              f"set {self.name}.channels")
        return int(channels)

    def inject(self, model: nn.Module, config) -> list[Site]:
        self.plan(model, config)  # every path exists before anything changes
        sites = []
        for place in self.placements(config):
            channels = self.channels_for(model, place, config)
            encoder = get_submodule(model, place.encoder)
            decoder = get_submodule(model, place.decoder)
            mod = self.make_modulator(config, channels, place.latent, "modulate")
            demod = self.make_modulator(config, channels, place.latent, "demodulate")
            replace_submodule(model, place.encoder, nn.Sequential(encoder, mod))
            replace_submodule(model, place.decoder, nn.Sequential(demod, decoder))
            sites.append(Site(f"{place.encoder}.1", self.name, f"modulate-{place.latent}", mod.added_param_count()))
            sites.append(Site(f"{place.decoder}.0", self.name, f"demodulate-{place.latent}",
                              demod.added_param_count()))
        return sites
