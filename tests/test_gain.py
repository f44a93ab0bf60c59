"""The ``gain`` plugin: gain and inverse-gain vectors, exponential interpolation between lambdas, hyper gains."""

from __future__ import annotations

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
    assert sorted(found) == ["g_a.1", "g_s.0", "h_a.1", "h_s.0"]
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
    assert names == ["g_a.1.gains", "g_s.0.gains", "h_a.1.gains", "h_s.0.gains"]


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
