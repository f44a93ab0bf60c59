"""Distillation from the starting model (vrtk/train/distill.py): the teacher is the run's model without its
plugins, its terms are zero while the student computes what the teacher does, and they pull a gated student back."""

from __future__ import annotations

import json

import pytest
import torch

from vrtk.errors import RecipeError
from vrtk.train.recipe import resolve
from vrtk.train.runner import Trainer, build_for_training, prepare_run_dir


def trainer(tmp_path, *overrides: str) -> Trainer:
    config = resolve("ecg-finetune", ["profile=test", f"out={tmp_path / 'run'}", *overrides])
    return Trainer(config, prepare_run_dir(config, resume=False), [0.0035], resume=False, progress=False)


def test_the_teacher_is_the_starting_model_without_the_runs_plugins(tmp_path):
    config = resolve("ecg-finetune", ["profile=test", f"out={tmp_path / 'run'}"])
    student = build_for_training(config, [0.0035])
    teacher = build_for_training(config, [0.0035], with_plugins=False)
    assert [p.name for p in student.plugins] == ["ecg"] and teacher.plugins == []
    shared = {k for k in teacher.net.state_dict()} & {k for k in student.net.state_dict()}
    assert shared, "the two should share the base's tensors"


def test_terms_are_zero_when_the_student_computes_what_the_teacher_does(tmp_path):
    t = trainer(tmp_path, "distill=1", "distill_latent=1", "plugin_config.ecg.init_sparsity=null",
                "plugin_config.ecg.alpha_init=0")
    x = torch.rand(1, 3, 64, 64)
    seen: dict = {}
    t.net.eval()
    with torch.no_grad(), t._watched(seen):
        out = t.net(x)
    terms = t.teacher.terms(x, out["x_hat"], seen, 0.0035)
    assert set(terms) == {"distill", "distill_latent"}
    assert all(float(v) < 1e-6 for v in terms.values()), terms  # alpha = 0: every gate open, the base unchanged


def test_a_gated_student_is_pulled_toward_the_teacher(tmp_path):
    t = trainer(tmp_path, "distill=1", "distill_latent=0.5", "plugin_config.ecg.init_sparsity=0.6")
    records = [t.train_step() for _ in range(3)]
    assert all(r["loss/distill"] > 0 and r["loss/distill_latent"] > 0 for r in records)
    gradients = [p.grad for p in t.net.parameters() if p.grad is not None]
    assert gradients and all(torch.isfinite(g).all() for g in gradients)
    assert all(not p.requires_grad for p in t.teacher.net.parameters())


def test_a_recipe_run_with_distillation_logs_its_terms(tmp_path):
    t = trainer(tmp_path, "distill=0.5", "steps=2", "log_every=1")
    t.run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records and all("loss/distill" in r and "loss/distill_latent" not in r for r in records)


def test_negative_weights_are_refused(tmp_path):
    with pytest.raises(RecipeError, match="distill"):
        trainer(tmp_path, "distill=-1")
