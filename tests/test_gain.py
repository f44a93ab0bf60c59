"""The ``gain`` plugin: gain and inverse-gain vectors, exponential interpolation between lambdas, hyper gains."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY_KWARGS

from vrtk.errors import RateError
from vrtk.injection import adapters
from vrtk.model import trainable_setup, wrap
from vrtk.modulation import interpolation_point
from vrtk.plugin_manager import get_registry
from vrtk.rate import use_rate
from vrtk.zoo import COMPRESSAI_MSE_LAMBDAS, BaseSpec

LAMS = [0.0018, 0.0035, 0.0067, 0.013]



def tiny(plugins, seed=0, **configs):
    torch.manual_seed(seed)
    spec = BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS))
    return wrap(spec, plugins, configs or None)


def units(wrapped):
    return {n: m for n, m in adapters(wrapped.net) if type(m).__name__ == "GainUnit"}


def test_registered_with_the_trained_range():
    injector = get_registry().injector("gain")
    assert injector.rate_dependent
    assert injector.rate_range(injector.make_config()) == list(COMPRESSAI_MSE_LAMBDAS)
    assert injector.rate_range(injector.make_config({"lambdas": [0.05, 0.01]})) == [0.01, 0.05]


def test_gains_for_y_and_z_start_at_one():
    wrapped = tiny(["gain"])
    found = units(wrapped)
    assert sorted(found) == ["g_a.1", "g_s.0", "h_a.2", "h_s.0"]  # h_a.0 is the Ungain (hyper_input=ungained)
    assert [(found[n].role, found[n].channels) for n in sorted(found)] == [
        ("modulate", 12), ("demodulate", 12), ("modulate", 8), ("demodulate", 8)]
    for unit in found.values():
        assert unit.gains.shape == (8, unit.channels) and torch.equal(unit.gains, torch.ones_like(unit.gains))
    assert sorted(units(tiny(["gain"], gain={"hyper": False}))) == ["g_a.1", "g_s.0"]


@torch.no_grad()
def test_wrapped_model_starts_as_exactly_the_base(tiny_images):
    base = tiny([]).net.eval()
    wrapped = tiny(["gain"]).net.eval()
    x = torch.stack([img[:, :64, :64] for img in tiny_images])
    expected = base(x)
    for lmbda in (0.0018, 0.02, 0.18):
        with use_rate(wrapped, lmbda):
            out = wrapped(x)
        assert torch.equal(out["x_hat"], expected["x_hat"])
        assert torch.equal(out["likelihoods"]["z"], expected["likelihoods"]["z"])


def test_interpolation_point_is_log_linear():
    assert interpolation_point(0.0018, LAMS) == (0, 0.0)
    assert interpolation_point(0.013, LAMS) == (2, 1.0)
    s, frac = interpolation_point(math.sqrt(0.0035 * 0.0067), LAMS)
    assert s == 1 and math.isclose(frac, 0.5)
    s, frac = interpolation_point(0.005, LAMS)
    assert s == 1 and math.isclose(frac, math.log(0.005 / 0.0035) / math.log(0.0067 / 0.0035))


def test_exponential_interpolation_formula():
    wrapped = tiny(["gain"], gain={"lambdas": LAMS})
    unit = units(wrapped)["g_a.1"]
    torch.manual_seed(2)
    with torch.no_grad():
        unit.gains.copy_(torch.randn(unit.gains.shape))  # negative entries too: the formula uses |m|
    m = unit.gains.detach().abs()
    for i, lmbda in enumerate(LAMS):
        unit.set_rate(lmbda)
        torch.testing.assert_close(unit.scale(), m[i])
    lmbda = 0.005
    frac = math.log(lmbda / 0.0035) / math.log(0.0067 / 0.0035)
    unit.set_rate(lmbda)
    torch.testing.assert_close(unit.scale(), m[1] ** (1 - frac) * m[2] ** frac)
    # continuous at a trained lambda, from both sides
    for eps in (1 - 1e-9, 1 + 1e-9):
        unit.set_rate(0.0035 * eps)
        torch.testing.assert_close(unit.scale(), m[1], atol=1e-6, rtol=1e-6)


def test_inverse_gains_are_their_own_parameters():
    wrapped = tiny(["gain"])
    trainable_setup(wrapped, "plugins")
    names = sorted(n for n, p in wrapped.net.named_parameters() if p.requires_grad)
    assert names == ["g_a.1.gains", "g_s.0.gains", "h_a.2.gains", "h_s.0.gains"]


def test_gradient_reaches_both_neighbouring_gain_vectors(tiny_images):
    wrapped = tiny(["gain"], gain={"lambdas": LAMS})
    net = wrapped.net.train()
    with use_rate(net, 0.005):
        out = net(tiny_images[0][None, :, :64, :64])
    sum(torch.log2(lk).sum() for lk in out["likelihoods"].values()).backward()
    grad = net.g_a[1].gains.grad
    assert grad[1].abs().sum() > 0 and grad[2].abs().sum() > 0
    assert grad[0].abs().sum() == 0 and grad[3].abs().sum() == 0


def test_rate_is_required_and_bounded(tiny_images):
    net = tiny(["gain"]).net.eval()
    with pytest.raises(RateError, match="no rate is set"):
        net(tiny_images[0][None, :, :64, :64])
    with pytest.raises(RateError, match=r"outside.*\[0.0018, 0.18\]"):
        units(tiny(["gain"]))["g_a.1"].set_rate(0.2)


# -- what the hyper-encoder reads (hyper_input) -------------------------------------------------------------------
class Abs(torch.nn.Module):
    """ScaleHyperprior's h_a reads |y|; CompressAI's latent codec calls h_a(y), so the comparison adds the abs."""

    def forward(self, y):
        return y.abs()


def powers_of_two(unit, seed):
    """Gains 2^k (k in -2..2): y * m / m is then exact, so the two codecs quantise the very same numbers."""
    torch.manual_seed(seed)
    with torch.no_grad():
        unit.gains.copy_(2.0 ** torch.randint(-2, 3, unit.gains.shape).float())


def compressai_gain_hyperprior(net):
    """CompressAI's GainHyperpriorLatentCodec (its Cui et al.) around the very modules of a gain-wrapped model."""
    from compressai.latent_codecs import GainHyperLatentCodec, GainHyperpriorLatentCodec, GaussianConditionalLatentCodec

    hyper = GainHyperLatentCodec(net.entropy_bottleneck, torch.nn.Sequential(Abs(), net.h_a[1]), net.h_s[1])
    y = GaussianConditionalLatentCodec(gaussian_conditional=net.gaussian_conditional, chunks=("scales",))
    return GainHyperpriorLatentCodec({"y": y, "hyper": hyper})


@torch.no_grad()
def test_default_is_compressais_gain_hyperprior(tiny_images):
    """Default (hyper_input=ungained): h_a reads g_a's own output and only the coded y is gained, exactly as in
    CompressAI's gain hyperprior built from the same modules and gain vectors."""
    assert get_registry().injector("gain").make_config().hyper_input == "ungained"
    net = tiny(["gain"], gain={"lambdas": LAMS}).net.eval()
    for seed, unit in enumerate(units_of(net)):
        powers_of_two(unit, seed)
    with torch.no_grad():  # untrained y and z are ~0.05 and all quantise to 0: make them vary
        for conv in (net.g_a[0][-1], net.h_a[1][-1]):
            conv.weight.mul_(30)
            conv.bias.mul_(30)
    codec = compressai_gain_hyperprior(net)
    x = torch.stack([img[:, :64, :64] for img in tiny_images])
    for lmbda in LAMS:
        with use_rate(net, lmbda):
            ours = net(x)
            gains = [m.scale()[None, :, None, None] for m in (net.g_a[1], net.h_a[2], net.g_s[0], net.h_s[0])]
        ref = codec(net.g_a[0](x), *gains)
        assert ref["y_hat"].abs().amax() >= 2 and (ours["likelihoods"]["z"] < 0.5).any()  # not a trivial latent
        assert torch.equal(ours["likelihoods"]["y"], ref["likelihoods"]["y"])
        assert torch.equal(ours["likelihoods"]["z"], ref["likelihoods"]["z"])
        assert torch.equal(ours["x_hat"], net.g_s[1](ref["y_hat"]))


def units_of(net):
    return [m for _, m in adapters(net) if type(m).__name__ == "GainUnit"]


def test_hyper_input_gained_feeds_h_a_the_gained_latent(tiny_images):
    wrapped = tiny(["gain"], gain={"lambdas": LAMS, "hyper_input": "gained"})
    net = wrapped.net.eval()
    assert [type(m).__name__ for m in net.h_a] == ["Sequential", "GainUnit"]
    assert ("h_a.1", "modulate-z") in [(s.path, s.kind) for s in wrapped.sites]
    with torch.no_grad():
        net.g_a[1].gains.fill_(3.0)
    seen = {}
    net.h_a[0].register_forward_pre_hook(lambda mod, inp: seen.setdefault("h_a", inp[0]))
    x = tiny_images[0][None, :, :64, :64]
    with torch.no_grad(), use_rate(net, 0.0035):
        net(x)
        y = net.g_a[0](x)
    torch.testing.assert_close(seen["h_a"], (3.0 * y).abs())


def test_ungained_input_with_and_without_hyper_gains(tiny_images):
    """The Ungain divides the y gain back out whether or not z has gains; its site is listed, it has no params."""
    for hyper, layout in ((True, ["Ungain", "Sequential", "GainUnit"]), (False, ["Ungain", "Sequential"])):
        wrapped = tiny(["gain"], gain={"lambdas": LAMS, "hyper": hyper})
        net = wrapped.net.eval()
        assert [type(m).__name__ for m in net.h_a] == layout
        assert ("h_a.0", "ungain-y", 0) in [(s.path, s.kind, s.added_params) for s in wrapped.sites]
        with torch.no_grad():
            net.g_a[1].gains.fill_(3.0)
        seen = {}
        net.h_a[1].register_forward_pre_hook(lambda mod, inp, seen=seen: seen.setdefault("h_a", inp[0]))
        x = tiny_images[0][None, :, :64, :64]
        with torch.no_grad(), use_rate(net, 0.0035):
            net(x)
            y = net.g_a[0](x)
        torch.testing.assert_close(seen["h_a"], y.abs())


def test_model_saved_before_hyper_input_existed_loads_as_trained(tmp_path, tiny_images):
    """An old config.json names every other field and no hyper_input: it was trained with h_a reading the gained
    y, and must load that way (same keys, same outputs), while a partial config gets the new default."""
    from vrtk.model import load_model, save_model
    from vrtk.zoo import build_base

    injector = get_registry().injector("gain")
    assert injector.make_config({"hyper": True}).hyper_input == "ungained"
    torch.manual_seed(0)
    base = tmp_path / "base.pt"
    torch.save(build_base(BaseSpec("bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS)))
               .state_dict(), base)
    spec = BaseSpec("bmshj2018-hyperprior", weights=str(base), arch_kwargs=dict(TINY_KWARGS))
    old = wrap(spec, ["gain"], {"gain": {"lambdas": LAMS, "hyper_input": "gained"}})
    for seed, unit in enumerate(units_of(old.net)):
        powers_of_two(unit, seed)
    config_file = save_model(old, tmp_path / "old") / "config.json"
    config = json.loads(config_file.read_text())
    del config["plugins"][0]["config"]["hyper_input"]
    config_file.write_text(json.dumps(config))
    loaded = load_model(tmp_path / "old").net.eval()
    assert [type(m).__name__ for m in loaded.h_a] == ["Sequential", "GainUnit"]
    x = tiny_images[0][None, :, :64, :64]
    with torch.no_grad(), use_rate(loaded, 0.005), use_rate(old.net.eval(), 0.005):
        assert torch.equal(loaded(x)["x_hat"], old.net(x)["x_hat"])


def test_paper_profile_sums_over_lambdas_and_cpu_profile_keeps_its_old_form():
    from vrtk.train.recipe import resolve

    paper, cpu = resolve("gain-finetune", ["profile=paper"]), resolve("gain-finetune", ["profile=cpu"])
    assert paper.lambda_mode == "sum" and "gain" not in paper.plugin_config  # the defaults: CompressAI's form
    assert cpu.lambda_mode == "sample" and cpu.plugin_config["gain"] == {"hyper_input": "gained"}
