"""ECG as Yin et al. publish it, by default: the paper's values, its alpha term pulling alpha up to alpha_t, the
paper profiles of the recipes, and the cpu profiles pinning the non-paper settings their results were made with."""

from __future__ import annotations

import json
from dataclasses import asdict, fields, replace

import pytest
import torch
from test_ecg import images, tiny
from vrtk_plugins.ecg.config import EcgConfig
from vrtk_plugins.ecg.plugin import ecg_modules

from vrtk.plugin_manager import get_registry
from vrtk.train.recipe import resolve
from vrtk.train.runner import run_recipe

BEYOND_THE_PAPER = ("energy_relative", "eps_relative", "init_sparsity", "sparsity_target", "gate_tile",
                    "alpha_reduction", "freeze_gates", "layer_targets", "layer_alpha_t")


def test_defaults_are_the_papers():
    cfg = EcgConfig()
    assert (cfg.estimator, cfg.eps_relative, cfg.energy_relative, cfg.gate_tile) == ("ste", False, False, 0)
    assert cfg.alpha_t == cfg.gamma == 1e-4  # "gamma = alpha_t = 1e-4"
    assert cfg.alpha_init == 0.0 < cfg.alpha_t  # "a relatively high target value alpha_t": alpha is pulled up
    assert cfg.alpha_reduction == "mean"  # "the mean square error of present alpha and alpha_t"
    assert cfg.init_sparsity is None and cfg.sparsity_target == 0.0  # no calibration, no sparsity penalty


def test_every_option_beyond_the_paper_says_so():
    """Each opt-in deviation is named in the config's docstring, in a paragraph that says "not in the paper"."""
    paragraphs = EcgConfig.__doc__.split("\n\n")
    for name in BEYOND_THE_PAPER:
        assert name in {f.name for f in fields(EcgConfig)}
        assert any(f"``{name}" in p and "not in the paper" in p for p in paragraphs), name


def test_paper_profile_is_the_default_config_and_cpu_profile_the_papers_loss_with_other_values():
    make = get_registry().injector("ecg").make_config
    paper = resolve("ecg-finetune", ["profile=paper"])
    assert make(paper.plugin_config["ecg"]) == EcgConfig()
    cpu = make(resolve("ecg-finetune", ["profile=cpu"]).plugin_config["ecg"])
    # the paper's loss form and gates; only alpha_t and gamma differ (benchmarks/ecg_study.py; results/kodak-v0.4)
    assert replace(cpu, alpha_t=1e-4, gamma=1e-4) == EcgConfig()
    assert (cpu.alpha_t, cpu.gamma) == (3e-3, 1.0)


@pytest.mark.parametrize("recipe", ["bm-finetune", "gain-finetune", "ecg-bm-finetune"])
def test_variable_rate_paper_profiles_sum_the_loss_over_lambdas(recipe):
    assert resolve(recipe, ["profile=paper"]).lambda_mode == "sum"  # eq. 8
    assert resolve(recipe, ["profile=cpu"]).lambda_mode == "sample"  # not the paper, and what it always did


def test_model_saved_before_alpha_reduction_existed_keeps_the_sum():
    """Old config.json files name every other field: fine-tuning such a model (ecg-bm-finetune) keeps its loss."""
    make = get_registry().injector("ecg").make_config
    old = asdict(EcgConfig(eps_relative=True, alpha_init=1e-4))
    del old["alpha_reduction"]
    assert make(old).alpha_reduction == "sum"
    assert make({"init_sparsity": 0.3}).alpha_reduction == "mean"  # a recipe's partial config: the paper's mean


def mean_eval_sparsity(net, x) -> float:
    net.eval()
    with torch.no_grad():
        net(x)
    stats = dict(get_registry().call("vrtk_layer_stats", model=net))["ecg"]
    net.train()
    return sum(stats.values()) / len(stats)


def train_alpha_term(configs: dict, steps: int) -> tuple[list[float], list[float]]:
    """A few optimizer steps on the alpha term alone, with the paper profile's optimizer and learning rate.
    Returns the mean alpha and the mean eval sparsity before and after each step."""
    from timm.optim import create_optimizer_v2

    paper = resolve("ecg-finetune", ["profile=paper"])
    net = tiny(configs=configs).net.train()
    gates = [m.gate for _, m in ecg_modules(net)]
    opt = create_optimizer_v2([p for g in gates for p in g.parameters()], opt=paper.opt, lr=paper.lr)
    x = images(2, 64)
    alphas, sparsity = [], []
    for step in range(steps + 1):
        alphas.append(float(torch.cat([g.alpha.detach() for g in gates]).mean()))
        sparsity.append(mean_eval_sparsity(net, x))
        if step == steps:
            break
        net(x)
        loss = dict(get_registry().call("vrtk_loss_terms", model=net, step=step))["ecg"]["alpha"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return alphas, sparsity


def test_paper_alpha_term_pulls_alpha_up_to_alpha_t_and_raises_sparsity():
    """The paper profile's alpha term (alpha from 0 toward alpha_t = 1e-4) raises every threshold step by step,
    and the gates zero more of their inputs; with the old defaults (alpha_init == alpha_t) it did nothing."""
    paper = resolve("ecg-finetune", ["profile=paper"]).plugin_config
    alphas, sparsity = train_alpha_term(paper, steps=6)
    assert alphas[0] == 0.0 and all(a < b <= 1e-4 for a, b in zip(alphas, alphas[1:], strict=False))
    assert alphas[-1] > 0.5e-4  # more than half way to alpha_t in six steps
    assert all(a <= b for a, b in zip(sparsity, sparsity[1:], strict=False))
    assert sparsity[-1] > sparsity[0] + 0.01
    old_alphas, old_sparsity = train_alpha_term({"ecg": {"alpha_init": 1e-4}}, steps=3)
    assert old_alphas == [pytest.approx(1e-4)] * 4 and len(set(old_alphas)) == 1  # zero gradient: no step
    assert old_sparsity[0] == old_sparsity[-1]


def test_paper_profile_trains_with_a_nonzero_alpha_term(tmp_path):
    """The paper profile, shrunk to a tiny random model, runs end to end; its alpha term is not zero from step 1
    (with alpha_init == alpha_t it was exactly 0), and the model folder records the paper's configuration."""
    overrides = ["profile=paper", "weights=random", "arch_kwargs={N: 8, M: 12}", "synthetic=4", "crop=64",
                 "batch=2", "steps=2", "lambdas=[0.0035]", "log_every=1", "ckpt_every=2", f"out={tmp_path}"]
    model = run_recipe(resolve("ecg-finetune", overrides), progress=False)[0]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    alpha_terms = [r["loss/ecg/alpha"] for r in records if "loss/ecg/alpha" in r]
    assert alpha_terms and all(t > 0 for t in alpha_terms) and "loss/ecg/sparsity" not in records[-1]
    saved = json.loads((model / "config.json").read_text())["plugins"][0]["config"]
    assert get_registry().injector("ecg").make_config(saved) == EcgConfig()


def test_deploy_profile_gates_only_the_last_synthesis_convolution_by_whole_channels(tmp_path):
    """The deploy profile (not the paper, made for `vrtk export --slim`) runs end to end on a tiny model and puts
    whole-channel gates on g_s.6 alone, with the paper's loss form at a higher alpha_t."""
    from vrtk.model import load_model

    overrides = ["profile=deploy", "model=bmshj2018-hyperprior", "weights=random", "arch_kwargs={N: 8, M: 12}",
                 "synthetic=4", "crop=64", "batch=2", "steps=4", "log_every=1", "ckpt_every=2", f"out={tmp_path}"]
    folder = run_recipe(resolve("ecg-finetune", overrides), progress=False)[0]
    net = load_model(folder).net
    gated = ecg_modules(net)
    assert [name for name, _ in gated] == ["g_s.6"]
    cfg = gated[0][1].gate.config
    assert (cfg.gate_tile, cfg.alpha_t, cfg.alpha_init) == (-1, 2e-2, 0.0)
