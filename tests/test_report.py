"""``vrtk report`` built from real ``vrtk eval`` results of tiny models, JPEG, and (if present) published curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from PIL import Image
from test_eval_probe import make_variable_model

from vrtk.data import synthetic_images
from vrtk.eval.report import flops_table, storage_tables
from vrtk.eval.results import Curve, build_curves, load_results
from vrtk.plugin_manager import Registry, set_registry

KODAK = Path("/work/shared/data/reference-rd/kodak")
FIXED_LAMBDAS = [0.002, 0.006, 0.02]


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Three one-point fixed-rate models, one variable-rate model swept at 3 rates, and JPEG, on 2 images."""
    from vrtk.model import save_model, wrap
    from vrtk.zoo import BaseSpec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    images = root / "images"
    images.mkdir()
    for i, img in enumerate(synthetic_images(1, 64, 80, seed=3) + synthetic_images(1, 168, 164, seed=4)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(images / f"im{i}.png")
    common = ("--data", str(images), "--repeats", "1", "--no-progress")
    results, fixed_dirs = [], []
    for seed, lmbda in enumerate(FIXED_LAMBDAS):
        set_registry(Registry(autoload=False))
        torch.manual_seed(seed)
        wrapped = wrap(BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs={"N": 8, "M": 12}))
        wrapped.lambdas = [lmbda]
        wrapped.net.update(force=True)
        folder = save_model(wrapped, root / f"fixed{seed}")
        fixed_dirs.append(folder)
        out = root / f"fixed{seed}.json"
        assert run_cli("eval", str(folder), *common, "-o", str(out))[0] == 0
        results.append(out)
    make_variable_model(root / "var")
    out = root / "var.json"
    assert run_cli("eval", str(root / "var"), "--n-points", "3", *common, "-o", str(out))[0] == 0
    results.append(out)
    out = root / "jpeg.json"
    assert run_cli("eval", "--codec", "jpeg", "--qualities", "10,50,90", *common, "-o", str(out))[0] == 0
    results.append(out)
    set_registry(None)
    torch.set_num_threads(threads)
    return {"root": root, "results": results, "fixed_dirs": fixed_dirs, "var_dir": root / "var"}


def test_report_builds_pngs_tables_and_markdown(evaluated):
    root = evaluated["root"]
    out = root / "report"
    refs = []
    if (KODAK / "compressai-bmshj2018-hyperprior_mse_cuda.json").is_file():
        refs = ["--reference", str(KODAK), "--reference-match", "compressai-bmshj2018-hyperprior_mse_cuda.json"]
    code, stdout, stderr = run_cli("report", *map(str, evaluated["results"]), "-o", str(out), *refs)
    assert code == 0, stderr
    assert "BD against JPEG" in stdout
    for name in ("rd-psnr.png", "rd-msssim.png", "sparsity.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200
    summary = json.loads((out / "report.json").read_text())
    curves = {c["label"]: c for c in summary["curves"]}
    fixed = curves["bmshj2018-hyperprior (mse, fixed-rate)"]
    assert fixed["kind"] == "fixed" and fixed["points"] == 3  # three one-point files joined into one curve
    assert curves["var"]["kind"] == "variable" and curves["var"]["points"] == 3
    assert summary["anchor"] == "JPEG"
    bd = {r["curve"]: r for r in summary["bd"]}
    assert bd["JPEG"]["bd_rate_psnr"] == pytest.approx(0.0, abs=1e-9)
    if refs:
        label = "compressai-bmshj2018-hyperprior_mse_cuda (published, GPU-trained)"
        assert curves[label]["kind"] == "reference" and curves[label]["points"] == 8

    # Storage: measured folder sizes of the three fixed models against the variable-rate model's folder.
    measured = [r for r in summary["storage"]["replaces"] if r["measured"]]
    assert len(measured) == 1 and measured[0]["n_fixed"] == 3
    fixed_bytes = sum(folder_size(d) for d in evaluated["fixed_dirs"])
    assert measured[0]["fixed_folder_bytes"] == fixed_bytes
    assert measured[0]["variable_folder_bytes"] == folder_size(evaluated["var_dir"])
    assert measured[0]["saved_percent_disk"] == pytest.approx(100 * (1 - folder_size(evaluated["var_dir"])
                                                                     / fixed_bytes))
    stored = [load_results(p)["vrtk"]["storage"]["full_bytes_fp32"] for p in evaluated["results"][:4]]
    assert measured[0]["saved_percent_fp32"] == pytest.approx(100 * (1 - stored[3] / sum(stored[:3])))

    # MACs table: one row per rate of every model curve; sparsity only where a plugin reported it.
    rows = [r for r in summary["flops"] if r["curve"] == "var"]
    assert len(rows) == 3 and all(r["reduction_vs_dense"] >= 1 for r in rows)
    assert all(0 <= r["mean_sparsity"] <= 1 for r in rows)

    md = (out / "report.md").read_text()
    for needle in ("![bpp vs PSNR](rd-psnr.png)", "![per-layer sparsity](sparsity.png)", "## BD-rate against JPEG",
                   "## Storage", "## Compute (MACs)", "## Runtime", "vrtk eval --data", "vrtk report "):
        assert needle in md, needle


def test_unknown_anchor_is_a_clear_error(evaluated, tmp_path):
    code, _, stderr = run_cli("report", *map(str, evaluated["results"]), "-o", str(tmp_path), "--anchor", "nope")
    assert code == 2 and "matches no curve" in stderr and "JPEG" in stderr


def test_bad_results_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "results": {"bpp": [0.1, 0.2], "psnr-rgb": [30.0]}}))
    code, _, stderr = run_cli("report", str(bad), "-o", str(tmp_path / "r"))
    assert code == 2 and "psnr-rgb has 1 values" in stderr


def test_fixed_rate_files_group_by_their_group(evaluated):
    items = [(load_results(p), str(p)) for p in evaluated["results"]]
    curves = {c.label: c for c in build_curves(items)}
    fixed = curves["bmshj2018-hyperprior (mse, fixed-rate)"]
    assert fixed.bpp == sorted(fixed.bpp) and sorted(fixed.lambdas) == FIXED_LAMBDAS
    assert len(fixed.storage) == 3 and len(fixed.commands) == 3
    tables = storage_tables(list(curves.values()))
    assert {m["folder_bytes"] for m in tables["models"] if m["curve"] == fixed.label} == \
        {folder_size(d) for d in evaluated["fixed_dirs"]}


def test_flops_table_arithmetic():
    """PSNR drop at matched bpp against the baseline, and MAC reductions, from the curves' own numbers."""
    kmacs = {"encoder_dense": [100.0] * 3, "encoder_effective": [95.0] * 3, "decoder_dense": [100.0] * 3,
             "decoder_effective": [105.0] * 3}
    base = Curve("base", "fixed", bpp=[0.2, 0.4, 0.8], psnr=[30.0, 32.0, 34.0], lambdas=[1.0, 2.0, 3.0],
                 kmacs=kmacs, sparsity=[{}, {}, {}])
    gated = Curve("gated", "variable", bpp=[0.4], psnr=[31.68], lambdas=[2.0],
                  kmacs={"encoder_dense": [100.0], "encoder_effective": [40.0], "decoder_dense": [100.0],
                         "decoder_effective": [60.0]}, sparsity=[{"x/g_a.2/sparsity": 0.5, "x/g_s.4/sparsity": 0.7}],
                  layer_kmacs=[{"encoder": {"g_a.0": [10.0, 10.0], "g_a.2": [1.0, 1.0],
                                            "g_a.2.base_layer": [40.0, 15.0]},
                                "decoder": {"g_s.4": [2.0, 2.0], "g_s.4.base_layer": [40.0, 2.0],
                                            "g_s.6": [10.0, 9.0]}}])
    rows = flops_table([base, gated], base)
    gated_row = [r for r in rows if r["curve"] == "gated"][0]
    assert gated_row["baseline_psnr"] == pytest.approx(32.0)
    assert gated_row["psnr_drop_percent"] == pytest.approx(1.0)
    assert gated_row["reduction_vs_dense"] == pytest.approx(2.0)
    assert gated_row["reduction_vs_baseline"] == pytest.approx(2.0)
    assert gated_row["mean_sparsity"] == pytest.approx(0.6)
    # gated layers only: dense 40 + 40 of the wrapped convs over effective 15 + 2 plus the gates' 1 + 2
    assert gated_row["gated_kmacs_dense"] == pytest.approx(80.0)
    assert gated_row["gated_kmacs_effective"] == pytest.approx(20.0)
    assert gated_row["gated_reduction"] == pytest.approx(4.0)
    assert all(r["gated_reduction"] is None for r in rows if r["curve"] == "base")
    # the baseline's point at lambda 2.0: 0.4 bpp, 32.0 dB
    assert gated_row["same_lambda_bpp_change_percent"] == pytest.approx(0.0)
    assert gated_row["same_lambda_psnr_change_db"] == pytest.approx(-0.32)
    assert all(r["psnr_drop_percent"] is None for r in rows if r["curve"] == "base")
