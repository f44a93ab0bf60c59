"""The embedded models: `default` (variable-rate) and `default-base` (it, folded at one lambda), and folding."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import run_cli

from vrtk.errors import ModelError
from vrtk.fold import fold_modulators, folded_model
from vrtk.model import load_model, resolve_model, save_model, wrap
from vrtk.rate import use_rate
from vrtk.zoo import BaseSpec

LAMBDAS = [0.0018, 0.0035, 0.013]


def _trained_bm(tiny_spec, plugins=("bm",), configs=None):
    """A tiny variable-rate model whose modulators really vary with the rate (as after training)."""
    wrapped = wrap(tiny_spec, list(plugins), configs or {"bm": {"lambdas": LAMBDAS}})
    torch.manual_seed(1)
    for name, param in wrapped.net.named_parameters():
        if ".out." in name:  # the bm MLP's last layer starts at zero (identity); give it a rate dependence
            param.data.normal_(0, 0.3)
    wrapped.lambdas = LAMBDAS
    wrapped.net.update(force=True)
    wrapped.net.eval()
    return wrapped


@pytest.mark.parametrize("lmbda", [0.0018, 0.005, 0.013])
def test_folding_reproduces_the_variable_rate_model_at_that_rate(tiny_spec, tiny_images, lmbda):
    wrapped = _trained_bm(tiny_spec)
    x = torch.stack([img[:, :64, :64] for img in tiny_images])
    with torch.no_grad(), use_rate(wrapped.net, lmbda):
        expected = wrapped.net(x)["x_hat"]
    folded = fold_modulators(wrapped.net, lmbda)
    with torch.no_grad():
        got = folded(x)["x_hat"]
    assert torch.allclose(got, expected, atol=1e-5)
    assert not any("hidden" in k for k in folded.state_dict())  # a plain CompressAI model: no plugin left
    with torch.no_grad(), use_rate(wrapped.net, LAMBDAS[-1] if lmbda != LAMBDAS[-1] else LAMBDAS[0]):
        other = wrapped.net(x)["x_hat"]
    assert not torch.allclose(got, other, atol=1e-3)  # the test would notice a fold at the wrong rate


def test_folded_model_keeps_gates_and_round_trips_through_a_folder(tiny_spec, tiny_images, tmp_path):
    wrapped = _trained_bm(tiny_spec, ("ecg", "bm"), {"bm": {"lambdas": LAMBDAS}})
    folded = folded_model(wrapped, 0.0035)
    assert [p.name for p in folded.plugins] == ["ecg"] and folded.lambdas == [0.0035]
    reloaded = load_model(save_model(folded, tmp_path / "fixed"))
    x = tiny_images[0][None, :, :64, :64]
    with torch.no_grad(), use_rate(wrapped.net, 0.0035):
        expected = wrapped.net(x)["x_hat"]
    with torch.no_grad():
        assert torch.allclose(reloaded.net(x)["x_hat"], expected, atol=1e-5)


def test_fold_refuses_a_fixed_rate_model_and_a_rate_outside_the_range(tiny_spec):
    with pytest.raises(ModelError, match="variable-rate"):
        folded_model(wrap(tiny_spec), 0.0035)
    with pytest.raises(Exception, match="outside the trained range"):
        folded_model(_trained_bm(tiny_spec), 0.5)


def test_convert_fold_lambda_writes_a_fixed_rate_folder(tiny_spec, tmp_path):
    source = save_model(_trained_bm(tiny_spec), tmp_path / "vr")
    code, out, err = run_cli("convert", str(source), "-o", str(tmp_path / "fixed"), "--fold-lambda", "0.005")
    assert code == 0, err
    fixed = load_model(tmp_path / "fixed")
    assert fixed.plugins == [] and fixed.lambdas == [0.005] and fixed.base.arch == "bmshj2018-hyperprior"


def test_export_default_writes_both_embedded_models(tiny_spec, tmp_path, monkeypatch):
    import vrtk.zoo as zoo
    from vrtk.embedded import export_default

    source = save_model(_trained_bm(tiny_spec), tmp_path / "vr")
    assets = tmp_path / "assets"
    folder, weights = export_default(source, 0.0035, "test command", assets=assets)
    monkeypatch.setattr(zoo, "ASSETS", assets)
    default, base = resolve_model("default"), resolve_model("default-base")
    assert default.variable_rate and default.lambdas == LAMBDAS and default.extra["made_by"] == "test command"
    assert base.plugins == [] and base.lambdas == [0.0035]
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask and weights.stat().st_mode & 0o777 == 0o666 & ~umask
    state = base.net.state_dict()
    for key in ("gaussian_conditional.likelihood_lower_bound.bound", "entropy_bottleneck.likelihood_lower_bound.bound"):
        assert state[key].item() == pytest.approx(1e-9)  # buffers exact: fp16 would make this 0
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad(), use_rate(default.net, 0.0035):
        expected = default.net(x)["x_hat"]
    with torch.no_grad():
        assert (base.net(x)["x_hat"] - expected).abs().max() < 0.05  # the same model, fp16-rounded once more


def test_wrapping_default_extends_it_and_refuses_a_second_bm(tiny_spec, tmp_path, monkeypatch):
    import vrtk.zoo as zoo
    from vrtk.embedded import export_default

    export_default(save_model(_trained_bm(tiny_spec), tmp_path / "vr"), 0.0035, "test", assets=tmp_path / "a")
    monkeypatch.setattr(zoo, "ASSETS", tmp_path / "a")
    code, out, err = run_cli("wrap", "default", "--plugins", "ecg", "-o", str(tmp_path / "gated"))
    assert code == 0, err
    assert [p.name for p in load_model(tmp_path / "gated").plugins] == ["bm", "ecg"]
    code, out, err = run_cli("wrap", "default", "--plugins", "ecg,bm")
    assert code == 2 and "already has bm" in err and "default-base" in err


def test_default_is_not_a_base_architecture():
    from vrtk.zoo import build_base

    with pytest.raises(ModelError, match="default-base"):
        build_base(BaseSpec("default"))


def test_the_shipped_default_is_variable_rate_and_codes_at_different_rates():
    from vrtk.api import Coder

    coder = Coder("default")
    assert coder.wrapped.variable_rate and min(coder.wrapped.lambdas) <= 0.0018 and max(coder.wrapped.lambdas) >= 0.025
    image = torch.rand(3, 64, 64)
    sizes = {len(coder.compress(image, lmbda=lam).data) for lam in (0.0018, 0.025)}
    assert len(sizes) == 2
