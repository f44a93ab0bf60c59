"""Recipes end to end at toy scale, exact resume, safety rails, and DDP on CPU (gloo, 2 processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from vrtk.errors import RecipeError, TrainingError
from vrtk.train.recipe import list_recipes, resolve
from vrtk.train.runner import Trainer, run_recipe

RECIPES = ["pretrain", "fixed-rate", "bm-finetune", "gain-finetune", "ecg-finetune", "ecg-bm-finetune"]


def test_every_recipe_is_listed_with_cpu_and_paper_profiles():
    listed = {r["name"]: r for r in list_recipes()}
    assert set(RECIPES) <= set(listed)
    for name in RECIPES:
        assert {"cpu", "paper", "test"} <= set(listed[name]["profiles"]) and listed[name]["description"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_end_to_end(recipe, tmp_path):
    code, out, err = run_cli("run", recipe, "profile=test", f"out={tmp_path / 'run'}", "--no-progress")
    assert code == 0, err
    models = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("model saved: ")]
    assert models
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and "torch" in (run / "environment.txt").read_text()
    for model in models:
        config = json.loads(open(os.path.join(model, "config.json")).read())
        assert config["extra"]["training"]["recipe"] == recipe
    logs = list(run.rglob("metrics.jsonl"))
    records = [json.loads(line) for log in logs for line in log.read_text().splitlines()]
    assert records and all("bpp" in r and "loss" in r for r in records)
    if "ecg" in recipe:
        assert any(k.endswith("/sparsity") for k in records[-1])


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(RecipeError, match="unknown key 'step'; did you mean 'steps'"):
        resolve("pretrain", ["profile=test", "step=3"])
    with pytest.raises(RecipeError, match="did you mean bm-finetune"):
        resolve("bm-finetun")


def test_overrides_split_on_the_first_equals_and_nest():
    config = resolve("ecg-finetune", ["profile=test", "plugin_config.ecg.eps=5", "lambdas=[0.01, 0.02]",
                                      "description=a=b"])
    assert config.plugin_config["ecg"]["eps"] == 5 and config.lambdas == [0.01, 0.02]
    assert config.plugin_config["ecg"]["init_sparsity"] == 0.3  # the profile's other settings stay


def test_run_directory_is_never_reused_without_resume(tmp_path):
    args = ("run", "pretrain", "profile=test", f"out={tmp_path}", "--no-progress")
    (tmp_path / "precious.txt").write_text("keep me")
    code, _, err = run_cli(*args)
    assert code == 2 and "already exists" in err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def _weights(model_dir) -> dict:
    return load_file(os.path.join(model_dir, "model.safetensors"))


def test_interrupted_and_resumed_equals_straight_through(tmp_path, monkeypatch):
    straight = run_recipe(resolve("pretrain", ["profile=test", "steps=6", f"out={tmp_path / 'a'}"]), progress=False)
    calls = {"n": 0}
    original = Trainer.train_step

    def crash_after_four(self):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # the process dies during step 5; the checkpoint of step 3 remains
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", crash_after_four)
    config = resolve("pretrain", ["profile=test", "steps=6", f"out={tmp_path / 'b'}"])
    with pytest.raises(KeyboardInterrupt):
        run_recipe(config, progress=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 3
    resumed = run_recipe(config, resume=True, progress=False)
    a, b = _weights(straight[0]), _weights(resumed[0])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    config = resolve("pretrain", ["profile=test", "steps=6", f"out={tmp_path}"])
    original = Trainer._pick_lambdas
    monkeypatch.setattr(Trainer, "_pick_lambdas",
                        lambda self: [float("nan")] if self.step == 4 else original(self))
    with pytest.raises(TrainingError, match="at step 4"):
        run_recipe(config, progress=False)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 3


def test_ddp_on_cpu_with_two_processes(tmp_path):
    env = {**os.environ, "VRTK_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           "-m", "vrtk", "run", "pretrain", "profile=test", "steps=4", f"out={tmp_path / 'ddp'}", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()
    records = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 4 and records[-1]["world_size"] == 2


def test_ema_starts_after_the_first_batch_initialised_the_gates(tmp_path):
    """ECG sets alpha from the first batch (init_sparsity); an EMA copied before that would keep alpha_init
    (1e-4) for thousands of steps. timm's EMA copies the weights outright on its first updates (decay 0 for
    step <= 1, which the runner passes); two steps with EMA must end near two steps without it."""
    def alphas(ema: str) -> dict:
        config = resolve("ecg-finetune", ["profile=test", "steps=2", f"ema={ema}", f"out={tmp_path / ema}"])
        weights = _weights(run_recipe(config, progress=False)[0])
        return {k: float(v.float().mean()) for k, v in weights.items() if k.endswith("gate.alpha")}

    plain, averaged = alphas("0"), alphas("0.999")
    assert plain and plain.keys() == averaged.keys()
    for key, value in plain.items():
        assert averaged[key] == pytest.approx(value, rel=0.1), key


def _free_port() -> int:
    """A port nothing listens on now: a fixed one fails when another run (or a slow-closing one) holds it."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_overrides_may_follow_the_options(tmp_path):
    """`vrtk run RECIPE --no-progress key=value` works as `vrtk run --no-progress RECIPE key=value` does; an
    unknown option is still refused."""
    code, out, err = run_cli("run", "fixed-rate", "--no-progress", "profile=test", "steps=1", "lambdas=[0.01]",
                             f"out={tmp_path / 'run'}")
    assert code == 0, err
    assert "model saved: " in out and (tmp_path / "run" / "config.yaml").is_file()
    code, _, err = run_cli("run", "fixed-rate", "--no-such-option", "profile=test")
    assert code == 2 and "unrecognized arguments: --no-such-option" in err


def test_a_schedule_too_long_for_the_steps_is_a_clear_recipe_error(tmp_path):
    """wsd over two steps has no decay step: the error names the settings instead of timm's traceback."""
    config = resolve("fixed-rate", ["profile=test", "sched=wsd", "decay_fraction=0.25", "steps=2", f"out={tmp_path}"])
    with pytest.raises(RecipeError, match="sched=wsd cannot run with steps=2"):
        run_recipe(config, progress=False)
