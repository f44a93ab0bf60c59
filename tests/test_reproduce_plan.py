"""benchmarks/reproduce.py plans make-style: nothing is retrained when its results exist, a missing result pulls in
exactly the models it needs, and an explicitly named stage runs."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce.py"


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plan_with_results(reproduce, tmp_path, missing=()):
    """A plan whose every stage output exists except the stages named in ``missing`` and all training stages."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    plan = reproduce.stages(runs, results, tmp_path / "kodak", tmp_path / "train")
    for name, commands, done in plan:
        if name not in missing and not reproduce.products(commands):
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text("x")
    return plan


def test_nothing_is_retrained_when_all_results_exist(reproduce, tmp_path):
    plan = plan_with_results(reproduce, tmp_path)
    assert reproduce.select(plan, []) == ["report", "report-ecg"]


def test_a_missing_result_pulls_in_the_models_it_reads(reproduce, tmp_path):
    plan = plan_with_results(reproduce, tmp_path, missing={"bm-fp16-eval", "ecg-knob"})
    assert reproduce.select(plan, []) == ["bm", "bm-fp16", "bm-fp16-eval", "ecg-0.0035", "ecg-knob", "report",
                                          "report-ecg"]


def test_named_stages_run_with_their_inputs_only(reproduce, tmp_path):
    plan = plan_with_results(reproduce, tmp_path)
    assert reproduce.select(plan, ["ecg-bm"]) == ["ecg-0.0035", "ecg-bm"]
    assert reproduce.select(plan, ["gain"]) == ["gain"]
    (tmp_path / "runs" / "gain" / "model").mkdir(parents=True)
    assert reproduce.select(plan, ["gain", "gain-eval"]) == []


def test_the_ecg_study_runs_only_when_named_and_writes_under_results(reproduce, tmp_path):
    plan = plan_with_results(reproduce, tmp_path)
    assert "ecg-study" not in reproduce.select(plan, [])
    assert reproduce.select(plan, ["ecg-study"]) == ["ecg-study"]
    (command,), done = next((c, d) for name, c, d in plan if name == "ecg-study")
    assert command[1].endswith("ecg_study.py") and done == tmp_path / "results" / "ecg-study" / "table.md"
    assert command[command.index("--results") + 1] == str(tmp_path / "results" / "ecg-study")


def test_a_report_lists_the_results_made_earlier_in_the_same_run(reproduce, tmp_path, monkeypatch):
    runs, results = tmp_path / "runs", tmp_path / "results"
    (runs / "bm" / "model").mkdir(parents=True)  # trained; its evaluation is still to do
    ran = []

    def run_command(entry, results_dir, dry_run):
        cmd, _ = reproduce.unpack(entry)
        ran.append(cmd)
        if "eval" in cmd:
            Path(cmd[cmd.index("-o") + 1]).write_text("{}")
        return True

    monkeypatch.setattr(reproduce, "run_command", run_command)
    monkeypatch.setattr(reproduce, "report_against_commit", lambda target: None)
    monkeypatch.setattr("sys.argv", ["reproduce.py", "--runs", str(runs), "--results", str(results),
                                     "--stages", "bm-eval,report"])
    assert reproduce.main() == 0
    report = next(cmd for cmd in ran if cmd[:2] == ["vrtk", "report"])
    assert str(results / "bm.json") in report  # planned before bm-eval ran, it would have missed it
