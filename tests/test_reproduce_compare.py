"""benchmarks/reproduce.py says how far a regenerated result is from the committed one (per rate point)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "reproduce.py"


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def results(bpp, psnr, lambdas=None, qualities=None, msssim=None) -> dict:
    doc = {"name": "x", "results": {"bpp": bpp, "psnr-rgb": psnr, "ms-ssim-rgb": msssim or [None] * len(bpp)}}
    if lambdas:
        doc["results"]["lambda"] = lambdas
    if qualities:
        doc["results"]["quality"] = qualities
    return doc


def test_points_are_matched_by_rate_and_differences_computed(reproduce):
    """The issue's case: ecg-finetune at lambda 0.0035 retrained elsewhere, 0.3303 / 27.27 vs 0.3462 / 27.29."""
    fresh = results([0.3303, 0.5], [27.27, 29.0], lambdas=[0.0035, 0.013], msssim=[0.9, 0.95])
    committed = results([0.3462], [27.29], lambdas=[0.0035], msssim=[0.91])
    (row,) = reproduce.compare_documents(fresh, committed)  # lambda 0.013 is not in the committed file
    assert row["point"] == "lambda 0.0035"
    assert row["d_bpp"] == pytest.approx(-0.0159) and row["d_bpp_percent"] == pytest.approx(-4.5927, abs=1e-3)
    assert row["d_psnr"] == pytest.approx(-0.02) and row["d_msssim"] == pytest.approx(-0.01)
    lines = reproduce.format_comparison("ecg-0.0035.json", [row], "committed")
    assert "bpp 0.3303 vs 0.3462 (-0.0159, -4.59 %)" in lines[1] and "(-0.020 dB)" in lines[1]
    assert lines[-1] == "  largest difference: 4.59 % bpp, 0.020 dB PSNR"
    by_quality = reproduce.compare_documents(results([0.2, 0.3], [25.0, 27.0], qualities=[5, 10]),
                                             results([0.3, 0.2], [27.5, 25.0], qualities=[10, 5]))
    assert [(r["point"], r["d_psnr"]) for r in by_quality] == [("quality 5", 0.0), ("quality 10", -0.5)]


def test_compare_mode_walks_both_folders(reproduce, tmp_path):
    fresh, committed = tmp_path / "fresh", tmp_path / "committed"
    fresh.mkdir()
    committed.mkdir()
    (fresh / "a.json").write_text(json.dumps(results([0.3303], [27.27], lambdas=[0.0035])))
    (committed / "a.json").write_text(json.dumps(results([0.3462], [27.29], lambdas=[0.0035])))
    (fresh / "only-here.json").write_text(json.dumps(results([0.1], [20.0])))
    (fresh / "notes.json").write_text(json.dumps({"not": "results"}))
    (committed / "notes.json").write_text(json.dumps({"not": "results"}))
    lines = reproduce.compare_folders(fresh, committed)
    assert lines[0].startswith("a.json vs ") and "-4.59 %" in lines[1]
    assert not any("only-here" in line or "notes" in line for line in lines)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert reproduce.compare_folders(empty, committed)[0].startswith("no results JSON of the same name")


@pytest.mark.skipif(shutil.which("git") is None or subprocess.run(
    ["git", "-C", str(REPO), "cat-file", "-e", "HEAD:results/kodak-v0.8/paper-cpu/jpeg.json"],
    capture_output=True).returncode != 0,
    reason="needs the git checkout with the committed results")
def test_a_regenerated_result_is_compared_with_git_head(reproduce, tmp_path, capsys):
    committed_path = f"{reproduce.COMMITTED_RESULTS}/jpeg.json"
    committed = json.loads(subprocess.run(["git", "-C", str(REPO), "show", f"HEAD:{committed_path}"],
                                          capture_output=True, text=True, check=True).stdout)
    assert reproduce.committed_version(REPO / committed_path) == committed
    assert reproduce.committed_version(tmp_path / "jpeg.json") is None  # outside the repository
    committed["results"]["psnr-rgb"][0] += 0.5
    (tmp_path / "jpeg.json").write_text(json.dumps(committed))
    reproduce.report_against_commit(tmp_path / "jpeg.json")  # outside: the committed results file of that name
    out = capsys.readouterr().out
    points = len(committed["results"]["bpp"])
    assert out.startswith(f"jpeg.json vs {committed_path} at git HEAD: {points} point(s) in common")
    assert "(+0.500 dB)" in out and "largest difference: 0.00 % bpp, 0.500 dB PSNR" in out
