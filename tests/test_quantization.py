"""The ``quantization`` run setting: ``mixed`` estimates the rate on noisy latents as CompressAI does and decodes the
rounded latents the coder decodes, with a straight-through gradient; ``noise`` is CompressAI's training unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from compressai.entropy_models import EntropyModel
from conftest import run_cli

from vrtk.errors import RecipeError
from vrtk.model import wrap
from vrtk.rate import use_rate
from vrtk.train.quantization import training_quantization
from vrtk.train.recipe import resolve
from vrtk.train.runner import Trainer, bf16_autocast, lambdas_for, run_recipe
from vrtk.zoo import BaseSpec


def _forward(net, x, quantization, seed=0):
    torch.manual_seed(seed)
    with use_rate(net, 0.005), training_quantization(net, quantization):
        return net(x)


@pytest.mark.parametrize("arch", ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean"])
def test_mixed_decodes_what_the_coder_decodes_and_keeps_the_noisy_rate(arch):
    torch.manual_seed(0)
    spec = BaseSpec(arch=arch, weights="random", arch_kwargs={"N": 8, "M": 12})
    net = wrap(spec, ["bm"], {"bm": {"lambdas": [0.0035, 0.013]}}).net
    x = torch.rand(2, 3, 64, 64)
    noise, mixed = _forward(net.train(), x, "noise"), _forward(net, x, "mixed")
    with use_rate(net, 0.005), torch.no_grad():
        coded = net.eval()(x)  # CompressAI's eval forward: round(y - mean) + mean, z around its medians
    torch.testing.assert_close(mixed["x_hat"], coded["x_hat"])
    assert not torch.allclose(noise["x_hat"], mixed["x_hat"])
    # the same noise draw: the bottleneck's rate is CompressAI's own (y's scales come from the rounded z here)
    bottleneck = "z" if "z" in noise["likelihoods"] else "y"
    torch.testing.assert_close(mixed["likelihoods"][bottleneck], noise["likelihoods"][bottleneck])


def test_the_distortion_reaches_the_encoder_through_the_rounding(tiny_spec):
    net = wrap(tiny_spec, []).net
    x = torch.rand(1, 3, 64, 64)
    net.eval()(x)["x_hat"].square().mean().backward()  # plain rounding: no gradient reaches g_a
    assert net.g_a[0].weight.grad is None or net.g_a[0].weight.grad.abs().sum() == 0
    _forward(net.train(), x, "mixed")["x_hat"].square().mean().backward()
    assert net.g_a[0].weight.grad.abs().sum() > 0


def test_the_entropy_models_are_restored_and_nest_with_bf16_autocast(tiny_spec):
    net = wrap(tiny_spec, []).net.train()
    models = [m for m in net.modules() if isinstance(m, EntropyModel)]
    x = torch.rand(1, 3, 64, 64)
    with training_quantization(net, "mixed"), bf16_autocast(net, "cpu"):
        out = net(x)
    assert torch.isfinite(out["x_hat"]).all()
    assert models and all("forward" not in m.__dict__ for m in models)
    with bf16_autocast(net, "cpu"):  # the other order: mixed inside, bf16's fp32 wrapper back after it
        wrapper = [m.forward for m in models]
        with training_quantization(net, "mixed"):
            net(x)
        assert [m.forward for m in models] == wrapper
    assert all("forward" not in m.__dict__ for m in models)


def test_an_explicit_eval_call_is_left_alone(tiny_spec):
    net = wrap(tiny_spec, []).net.train()
    y = torch.randn(1, 8, 4, 4) * 3  # z: N channels
    with training_quantization(net, "mixed"):
        out, _ = net.entropy_bottleneck(y, False)  # training=False, positionally
    expected, _ = net.entropy_bottleneck(y, training=False)
    torch.testing.assert_close(out, expected)


def test_a_mixed_run_end_to_end_records_the_setting(tmp_path):
    code, out, err = run_cli("run", "bm-finetune", "profile=test", "quantization=mixed", f"out={tmp_path / 'run'}",
                             "--no-progress")
    assert code == 0, err
    model = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("model saved: "))
    config = json.loads(open(f"{model}/config.json").read())
    assert config["extra"]["training"]["quantization"] == "mixed"


def test_a_mixed_step_differs_from_a_noise_step(tmp_path):
    losses = {}
    for name in ("noise", "mixed"):
        config = resolve("bm-finetune", ["profile=test", f"quantization={name}"])
        losses[name] = Trainer(config, tmp_path / name, lambdas_for(config), resume=False, progress=False).train_step()
    assert losses["noise"]["psnr"] != losses["mixed"]["psnr"]  # same weights, same crops, another decoder input


def test_bad_settings_are_clear_errors_before_any_run_directory(tmp_path):
    with pytest.raises(RecipeError, match="unknown quantization 'round'; choose one of noise, mixed"):
        run_recipe(resolve("bm-finetune", ["profile=test", "quantization=round", f"out={tmp_path / 'a'}"]))
    assert not (tmp_path / "a").exists()
    config = resolve("pretrain", ["profile=test", "model=mbt2018", "quantization=mixed"])
    with pytest.raises(RecipeError, match="autoregressive context.*quantization=noise"):
        Trainer(config, tmp_path / "b", lambdas_for(config), resume=False, progress=False)
