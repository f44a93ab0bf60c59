"""The ``bm`` plugin: the modulator's formula, its placement, starting as the base, and the rate hook."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_KWARGS, run_cli
from torch import nn

from vrtk.errors import PluginError, RateError
from vrtk.injection import Adapter, adapters, replace_submodule
from vrtk.model import trainable_setup, wrap
from vrtk.modulation import ChannelModulator, output_channels
from vrtk.plugin_manager import get_registry
from vrtk.rate import use_rate
from vrtk.zoo import COMPRESSAI_MSE_LAMBDAS, BaseSpec, build_base


def tiny(plugins, seed=0, **configs):
    torch.manual_seed(seed)
    spec = BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS))
    return wrap(spec, plugins, configs or None)


def test_registered_through_its_entry_point():
    registry = get_registry()
    injector = registry.injector("bm")
    assert injector.rate_dependent
    assert registry.injector_owner["bm"] == "bm"
    assert injector.rate_range(injector.make_config()) == list(COMPRESSAI_MSE_LAMBDAS)
    code, out, _ = run_cli("plugins", "--json")
    assert code == 0 and '"bm"' in out


def test_placement_and_sites():
    wrapped = tiny(["bm"])
    net = wrapped.net
    assert isinstance(net.g_a, nn.Sequential) and type(net.g_a[1]).__name__ == "BitrateModulator"
    assert isinstance(net.g_s, nn.Sequential) and type(net.g_s[0]).__name__ == "BitrateModulator"
    assert (net.g_a[1].role, net.g_s[0].role) == ("modulate", "demodulate")
    assert [(s.path, s.kind) for s in wrapped.sites] == [("g_a.1", "modulate-y"), ("g_s.0", "demodulate-y")]
    hidden, m = 50, TINY_KWARGS["M"]
    assert all(s.added_params == (hidden * 2) + (hidden * m + m) for s in wrapped.sites)
    assert wrapped.lambdas == sorted(COMPRESSAI_MSE_LAMBDAS)
    code, out, _ = run_cli("wrap", "bmshj2018-hyperprior", "--weights", "random", "--arch-kwargs",
                           '{"N":8,"M":12}', "--plugins", "bm", "--dry-run")
    assert code == 0 and "g_a" in out and "g_s" in out


@torch.no_grad()
def test_wrapped_model_starts_as_exactly_the_base(tiny_images):
    base = tiny([]).net.eval()
    wrapped = tiny(["bm"]).net.eval()
    x = torch.stack([img[:, :64, :64] for img in tiny_images])
    expected = base(x)
    for lmbda in (0.0018, 0.01, 0.18):
        with use_rate(wrapped, lmbda):
            out = wrapped(x)
        assert torch.equal(out["x_hat"], expected["x_hat"])
        assert torch.equal(out["likelihoods"]["y"], expected["likelihoods"]["y"])


def test_formula_matches_the_paper():
    wrapped = tiny(["bm"], bm={"lambdas": [0.01, 0.04, 0.16], "hidden": 7})
    bm = wrapped.net.g_a[1]
    torch.manual_seed(3)
    with torch.no_grad():
        for p in bm.parameters():
            p.normal_()
    w1, b1, w2, b2 = bm.hidden.weight, bm.hidden.bias, bm.out.weight, bm.out.bias
    for lmbda, t in ((0.01, -1.0), (0.04, 0.0), (0.16, 1.0), (0.02, -0.5)):
        bm.set_rate(lmbda)
        expected = torch.exp(w2 @ torch.relu(w1[:, 0] * t + b1) + b2)
        torch.testing.assert_close(bm.scale(), expected)
    assert bm.hidden.out_features == 7


def test_the_hyperprior_sees_the_modulated_latent(tiny_images):
    wrapped = tiny(["bm"])
    net = wrapped.net.eval()
    with torch.no_grad():
        net.g_a[1].out.bias.fill_(math.log(3.0))
    seen = {}
    net.h_a.register_forward_pre_hook(lambda mod, inp: seen.setdefault("h_a", inp[0]))
    x = tiny_images[0][None, :, :64, :64]
    with torch.no_grad(), use_rate(net, 0.01):
        net(x)
        y = net.g_a[0](x)
    torch.testing.assert_close(seen["h_a"], (3.0 * y).abs())


def test_no_rate_is_a_clear_error(tiny_images):
    net = tiny(["bm"]).net.eval()
    net.update(force=True)
    x = tiny_images[0][None, :, :64, :64]
    for call in (net, net.compress):
        with pytest.raises(RateError, match="use_rate"):
            call(x)
    with use_rate(net, 0.01):
        net(x)
    assert get_registry().call("vrtk_set_rate", model=net, lmbda=None)  # clearing the rate is allowed
    with pytest.raises(RateError, match="no rate is set"):
        net(x)


def test_out_of_range_rate_names_the_range():
    net = tiny(["bm"]).net
    with pytest.raises(PluginError, match=r"'bm'.*outside the range.*\[0.0018, 0.18\]"):
        with use_rate(net, 0.5):
            pass
    with pytest.raises(RateError, match="outside"):
        net.g_a[1].set_rate(1e-4)


def test_set_rate_touches_only_its_own_modules():
    net = tiny(["bm", "gain"]).net
    results = dict(get_registry().call("vrtk_set_rate", model=net, lmbda=0.02))
    assert (results["bm"], results["gain"]) == (2, 4)
    results = dict(get_registry().call("vrtk_set_rate", model=tiny([]).net, lmbda=0.02))
    assert (results["bm"], results["gain"]) == (0, 0)


def test_only_the_modulators_train(tiny_images):
    wrapped = tiny(["bm"])
    trainable_setup(wrapped, "plugins")
    names = {n for n, p in wrapped.net.named_parameters() if p.requires_grad}
    assert names == {f"{prefix}.{layer}.{kind}" for prefix in ("g_a.1", "g_s.0")
                     for layer in ("hidden", "out") for kind in ("weight", "bias")}


class FakeGate(Adapter):
    """Stands in for another plugin's adapter around a conv, with an inner conv of its own (1 channel out)."""

    plugin_name = "fake"

    def __init__(self, conv):
        super().__init__()
        self.base_layer = conv
        self.probe = nn.Conv2d(conv.out_channels, 1, 1)

    def forward(self, x):
        return self.base_layer(x)


def test_injection_sees_through_another_plugins_adapters():
    net = build_base(BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS)))
    replace_submodule(net, "g_a.6", FakeGate(net.g_a[6]))
    assert output_channels(net.g_a) == TINY_KWARGS["M"]
    injector = get_registry().injector("bm")
    injector.inject(net, injector.make_config())
    assert isinstance(net.g_a[0][6], FakeGate) and net.g_a[1].channels == TINY_KWARGS["M"]


@pytest.mark.skipif("ecg" not in get_registry().injectors, reason="the ecg plugin is not installed")
@pytest.mark.parametrize("order", [["ecg", "bm"], ["bm", "ecg"]], ids=",".join)
def test_combines_with_ecg_in_either_order(order, tiny_images):
    wrapped = tiny(order)
    kinds = [type(m).__name__ for _, m in adapters(wrapped.net)]
    assert kinds.count("BitrateModulator") == 2 and kinds.count("EcgConv") == 10
    modulators = [n for n, _ in adapters(wrapped.net, ChannelModulator)]
    assert modulators == ["g_a.1", "g_s.0"]
    trainable_setup(wrapped, "plugins")
    net = wrapped.net.eval()
    net.update(force=True)
    x = tiny_images[0][None, :, :64, :64]
    with torch.no_grad(), use_rate(net, 0.03):
        coded = net.compress(x)
        decoded = net.decompress(coded["strings"], coded["shape"])["x_hat"]
        torch.testing.assert_close(decoded, net(x)["x_hat"].clamp(0, 1), atol=1e-5, rtol=0)


def test_channel_override_and_mismatch_is_clear():
    wrapped = tiny(["bm"], bm={"channels": 5})
    with pytest.raises(PluginError, match="expected 5 channels"):
        with use_rate(wrapped.net, 0.01):
            wrapped.net(torch.rand(1, 3, 64, 64))
    with pytest.raises(PluginError, match="unknown config keys"):
        tiny(["bm"], bm={"hiden": 3})
