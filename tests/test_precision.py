"""The ``precision`` run setting on the CPU: bf16 autocast keeps CompressAI's entropy models and the loss in float32,
a bad value is refused before a run directory is made, and runs made before the setting existed still resume."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from compressai.entropy_models import EntropyModel

from vrtk.errors import RecipeError
from vrtk.model import wrap
from vrtk.rate import use_rate
from vrtk.train.recipe import resolve
from vrtk.train.runner import Trainer, bf16_autocast, configure_precision, lambdas_for, run_recipe


def test_bf16_autocast_keeps_the_entropy_models_in_float32(tiny_spec):
    net = wrap(tiny_spec, ["bm"], {"bm": {"lambdas": [0.0035, 0.013]}}).net.train()
    x = torch.rand(2, 3, 64, 64)
    with use_rate(net, 0.005), bf16_autocast(net, "cpu"):
        out = net(x)
    assert out["x_hat"].dtype == torch.bfloat16  # the transforms ran under autocast
    assert all(lk.dtype == torch.float32 for lk in out["likelihoods"].values())
    models = [m for m in net.modules() if isinstance(m, EntropyModel)]
    assert models and all("forward" not in m.__dict__ for m in models)  # restored after the step


def test_a_bf16_autocast_step_trains_in_float32_weights(tmp_path):
    config = resolve("bm-finetune", ["profile=test", "device=cpu", "precision=bf16-autocast"])
    trainer = Trainer(config, tmp_path, lambdas_for(config), resume=False, progress=False)
    record = trainer.train_step()
    assert trainer.autocast and math.isfinite(record["loss"]) and record["bpp"] > 0
    assert all(p.dtype == torch.float32 for p in trainer.net.parameters())


def test_precisions_on_the_cpu_and_a_bad_one():
    assert configure_precision("fp32", torch.device("cpu")) is False
    assert configure_precision("tf32", torch.device("cpu")) is False  # nothing to change on a CPU
    assert configure_precision("bf16-autocast", torch.device("cpu")) is True
    with pytest.raises(RecipeError, match="use one of fp32, tf32, bf16-autocast"):
        configure_precision("fp16", torch.device("cpu"))


def test_a_bad_precision_is_refused_before_the_run_directory_is_made(tmp_path):
    with pytest.raises(RecipeError, match="precision 'fp16'"):
        run_recipe(resolve("pretrain", ["profile=test", "precision=fp16", f"out={tmp_path / 'run'}"]), progress=False)
    assert not (tmp_path / "run").exists()


def test_a_run_from_before_the_precision_setting_resumes(tmp_path):
    config = resolve("pretrain", ["profile=test", "steps=3", f"out={tmp_path}"])
    run_recipe(config, progress=False)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["precision"]  # as written by vrtk before the setting existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    more = resolve("pretrain", ["profile=test", "steps=4", f"out={tmp_path}"])
    assert run_recipe(more, resume=True, progress=False)
    changed = resolve("pretrain", ["profile=test", "steps=5", "precision=bf16-autocast", f"out={tmp_path}"])
    with pytest.raises(RecipeError, match="precision"):
        run_recipe(changed, resume=True, progress=False)
