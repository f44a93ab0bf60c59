"""benchmarks/ecg_study.py (issue 15's controlled ECG study) is prepared to run: every training command resolves with
vrtk's own recipe code, the variants change what they say they change, and recovery holds the gates it loads."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ecg_study.py"


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("ecg_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ecg_study"] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def commands(study, tmp_path, name, toy=False):
    setup = study.Setup(tmp_path / "runs", tmp_path / "results", tmp_path / "kodak", 1, toy=toy, dry_run=True)
    return study.variant_commands(name, setup)


def trained_ecg(study, cmd):
    """The ECG config a ``vrtk run`` command trains with, resolved as vrtk resolves it."""
    from vrtk.plugin_manager import get_registry
    from vrtk.train.recipe import resolve

    config = resolve(cmd[2], [a for a in cmd[3:] if not a.startswith("--")])
    return config, get_registry().injector("ecg").make_config(config.plugin_config.get("ecg"))


def test_every_training_command_resolves(study, tmp_path):
    for name in study.VARIANTS:
        for cmd in commands(study, tmp_path, name):
            if cmd[:2] == ["vrtk", "run"]:
                study.check_training_command(cmd)  # raises on an unknown key or a bad value
                assert "crop=256" in cmd and "batch=1" in cmd and not (tmp_path / "runs").exists()


def test_variants_change_what_they_name(study, tmp_path):
    config, paper = trained_ecg(study, commands(study, tmp_path, "paper")[0])
    assert (paper.init_sparsity, paper.sparsity_target, paper.eps_relative, paper.alpha_init) == (None, 0, False, 0)
    assert (paper.alpha_t, paper.gamma, paper.alpha_reduction) == (1e-4, 1e-4, "mean")
    assert config.lambdas == [0.0035] and config.steps == study.STEPS
    for name, value, gamma in (("t0.4-g0", 0.4, 0.0), ("t0.7-g0", 0.7, 0.0), ("t0.6", 0.6, 1e-4)):
        ecg = trained_ecg(study, commands(study, tmp_path, name)[0])[1]
        assert (ecg.sparsity_target, ecg.gamma) == (value, gamma)
    from vrtk.model import plan
    from vrtk.zoo import BaseSpec

    spec = BaseSpec("bmshj2018-hyperprior", weights="random", arch_kwargs={"N": 8, "M": 12})
    for name, sites in (("only-g_a-g0", ["g_a.2", "g_a.4", "g_a.6"]), ("only-g_s-g0", ["g_s.2", "g_s.4", "g_s.6"]),
                        ("only-hyper-g0", ["h_a.2", "h_a.4", "h_s.2", "h_s.4"])):
        ecg = trained_ecg(study, commands(study, tmp_path, name)[0])[1]
        assert plan(spec, ["ecg"], {"ecg": {"targets": ecg.targets}})[0][1] == sites


def test_recovery_loads_the_held_copy_even_in_a_toy_run(study, tmp_path):
    first, copy, recover, evaluate = commands(study, tmp_path, "recover-t0.6-dec-g0", toy=True)
    held, out = copy[-1], next(a.split("=", 1)[1] for a in first if a.startswith("out="))
    assert copy[-2] == str(Path(out) / "model")  # the copy is of what the first stage trained
    config, _ = trained_ecg(study, recover)
    assert config.model == held and config.train == r"g_s\..*" and config.steps == 8  # toy schedule, not its model
    assert evaluate[2] == str(tmp_path / "runs" / "recover-t0.6-dec-g0-recovered" / "model")


def test_freeze_copy_records_held_gates(study, tmp_path):
    source = tmp_path / "model"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"plugins": [{"name": "ecg", "config": {"gamma": 1e-4}}]}))
    (source / "model.safetensors").write_bytes(b"weights")
    study.freeze_copy(source, tmp_path / "held")
    config = json.loads((tmp_path / "held" / "config.json").read_text())
    assert config["plugins"][0]["config"] == {"gamma": 1e-4, "freeze_gates": True}
    assert (tmp_path / "held" / "model.safetensors").read_bytes() == b"weights"
    assert "freeze_gates" not in (source / "config.json").read_text()
