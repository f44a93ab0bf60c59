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
STATIC_TOLERANCE = 1e-6  # relative change of a modulator's scale across the range below which it is static


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

    @torch.no_grad()
    def scales_over_range(self) -> torch.Tensor:
        """(P, C): the scale at the configured lambdas and the log-midpoints between them; the rate set before
        is restored. A modulator that has learned anything differs between some of these points."""
        before = self.lmbda
        try:
            rows = []
            for lmbda in probe_lambdas(self.lambdas):
                self.lmbda = lmbda
                rows.append(self.scale().detach().float().cpu())
            return torch.stack(rows)
        finally:
            self.lmbda = before

    def is_identity(self, tolerance: float = STATIC_TOLERANCE) -> bool:
        """Whether the scale is 1 everywhere in the range (how bm and gain start: the wrapped base unchanged)."""
        return bool((self.scales_over_range() - 1).abs().max() <= tolerance)

    def varies_with_rate(self, tolerance: float = STATIC_TOLERANCE) -> bool:
        """Whether the scale changes across the range; if no modulator's does, every rate codes the same."""
        scales = self.scales_over_range()
        return bool((scales - scales[0]).abs().max() > tolerance * scales[0].abs().max().clamp_min(1e-12))


def probe_lambdas(lambdas: Sequence[float]) -> list[float]:
    """The lambdas themselves plus the geometric midpoints between neighbours (where interpolation acts)."""
    lams = sorted(float(x) for x in lambdas)
    mids = [math.sqrt(a * b) for a, b in zip(lams, lams[1:], strict=False)]
    return sorted(lams + mids)


def untrained_rate_warning(model: nn.Module) -> str | None:
    """A sentence for the user when the model's rate modulators are the same at every lambda, else None.

    Plugin-agnostic: it looks at every :class:`RateModule`. It only speaks when all of them are
    :class:`ChannelModulator` (whose scale can be probed without an input) covering more than one lambda and none
    varies: then ``--lambda`` changes nothing and every rate writes the same bitstream. A fresh ``vrtk wrap``
    with ``bm`` or ``gain`` is such a model (both start as the identity) until a recipe trains it."""
    rate_modules = [m for m in model.modules() if isinstance(m, RateModule)]
    if not rate_modules or not all(isinstance(m, ChannelModulator) and len(m.lambdas) > 1 for m in rate_modules):
        return None
    if any(m.varies_with_rate() for m in rate_modules):
        return None
    plugins = sorted({m.plugin_name for m in rate_modules})
    lo = min(m.lambdas[0] for m in rate_modules)
    hi = max(m.lambdas[-1] for m in rate_modules)
    what = "the identity" if all(m.is_identity() for m in rate_modules) else "the same"
    return (f"{' and '.join(plugins)} {'is' if len(plugins) == 1 else 'are'} not trained: "
            f"{len(rate_modules)} rate modulators are {what} at every "
            f"lambda in [{lo:g}, {hi:g}], so every rate gives the same bitstream; train the model first "
            f"(`vrtk recipes` lists the recipes, `model=FOLDER` starts one from a saved model)")


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
