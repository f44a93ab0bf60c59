"""A small real plugin for the eval/report tests: a rate-dependent latent gain that also reports sparsity.

It uses only the public plugin protocol (an Injector, ``vrtk_set_rate``, ``vrtk_layer_stats``,
``vrtk_inference_modes``), so the eval code is exercised exactly as with ECG/BM, without depending on them:
``g_a`` output is multiplied by 100 sqrt(lambda) * boost and ``g_s`` input divided by it; each adapter
records the fraction of zeros at its input (zero padding before g_a, zero symbols of y_hat before g_s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from vrtk.hookspecs import hookimpl
from vrtk.injection import Adapter, Injector, Site, adapters, get_submodule, replace_submodule
from vrtk.plugin_manager import Registry, set_registry

PROBE_LAMBDAS = [0.002, 0.02]


class Gain(Adapter):
    plugin_name = "probe"

    def __init__(self, base_layer: nn.Module, inverse: bool):
        super().__init__()
        self.base_layer = base_layer
        self.inverse = inverse
        self.scale = nn.Parameter(torch.ones(1))
        self.lmbda: float | None = None
        self.boost = 1.0
        self.sparsity: float | None = None

    def gain(self) -> torch.Tensor:
        if self.lmbda is None:
            raise RuntimeError("probe: no rate set")
        return self.scale * 100 * math.sqrt(self.lmbda) * self.boost

    def forward(self, x):
        self.sparsity = float((x == 0).float().mean())
        if self.inverse:
            return self.base_layer(x / self.gain())
        return self.base_layer(x) * self.gain()


@dataclass
class ProbeConfig:
    lambdas: list = field(default_factory=lambda: list(PROBE_LAMBDAS))


class ProbeInjector(Injector):
    name = "probe"
    config_class = ProbeConfig
    rate_dependent = True

    def rate_range(self, config):
        return config.lambdas

    def plan(self, model, config):
        return ["g_a", "g_s"]

    def inject(self, model, config):
        sites = []
        for path, inverse in (("g_a", False), ("g_s", True)):
            module = Gain(get_submodule(model, path), inverse)
            replace_submodule(model, path, module)
            sites.append(Site(path, "probe", "gain", module.added_param_count()))
        return sites


class ProbePlugin:
    @hookimpl
    def vrtk_register_injectors(self, register):
        register(ProbeInjector())

    @hookimpl
    def vrtk_set_rate(self, model, lmbda):
        found = adapters(model, Gain)
        for _, module in found:
            module.lmbda = lmbda
        return len(found)

    @hookimpl
    def vrtk_layer_stats(self, model):
        stats = {f"probe/{name}/sparsity": m.sparsity for name, m in adapters(model, Gain) if m.sparsity is not None}
        return stats or None

    @hookimpl
    def vrtk_inference_modes(self, model, mode):
        if "probe.boost" not in mode:
            return None
        for _, module in adapters(model, Gain):
            module.boost = float(mode["probe.boost"])
        return ["probe.boost"]


def probe_registry() -> Registry:
    """A registry with only the probe plugin, installed as the process-wide one."""
    registry = Registry(autoload=False)
    registry.add_plugin(ProbePlugin(), "probe")
    set_registry(registry)
    return registry


def make_variable_model(folder, seed: int = 0):
    """A tiny variable-rate model (random hyperprior + probe gain), saved as a model folder."""
    from vrtk.model import save_model, wrap
    from vrtk.zoo import BaseSpec

    registry = probe_registry()
    torch.manual_seed(seed)
    wrapped = wrap(BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs={"N": 8, "M": 12}),
                   ["probe"], registry=registry)
    wrapped.net.update(force=True)
    save_model(wrapped, folder)
    return wrapped


def test_probe_rate_changes_the_bitstream(tmp_path):
    """The probe is a real rate control: a higher lambda gives a longer bitstream."""
    from vrtk.rate import use_rate

    wrapped = make_variable_model(tmp_path / "m")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sizes = []
    with torch.no_grad():
        for lmbda in PROBE_LAMBDAS:
            with use_rate(wrapped.net, lmbda):
                sizes.append(sum(len(s[0]) for s in wrapped.net.compress(x)["strings"]))
    assert sizes[0] < sizes[1]


def test_probe_reports_sparsity(tmp_path):
    from vrtk.plugin_manager import get_registry
    from vrtk.rate import use_rate

    wrapped = make_variable_model(tmp_path / "m")
    with torch.no_grad(), use_rate(wrapped.net, PROBE_LAMBDAS[0]):
        coded = wrapped.net.compress(torch.rand(1, 3, 64, 64))
        wrapped.net.decompress(coded["strings"], coded["shape"])
    stats = dict(get_registry().call("vrtk_layer_stats", model=wrapped.net))["probe"]
    assert set(stats) == {"probe/g_a/sparsity", "probe/g_s/sparsity"}
    assert all(0.0 <= v <= 1.0 for v in stats.values())

