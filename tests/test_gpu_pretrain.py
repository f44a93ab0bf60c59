"""The CPU-testable parts of the GPU pretraining script: the step plan, the output-folder check against the device
tool's limits, and the packing of training photos (the whole script has a CPU dry run, see its header)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image
from PIL.JpegImagePlugin import get_sampling

from vrtk.data import synthetic_images

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plan_fits_the_time_left():
    gpu = load("gpu_pretrain")
    steps, train_s = gpu.plan_steps(20.0, seconds_left=500, reserve_s=100, startup_s=20, train_max_s=420)
    assert train_s == 380 and steps == int(20 * 380 * 0.95)
    steps, train_s = gpu.plan_steps(20.0, seconds_left=900, reserve_s=100, startup_s=20, train_max_s=420)
    assert train_s == 420
    with pytest.raises(SystemExit, match="no time to train"):
        gpu.plan_steps(20.0, seconds_left=130, reserve_s=100, startup_s=20, train_max_s=420)


def test_outcheck_names_what_would_not_come_back(tmp_path):
    gpu = load("gpu_pretrain")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "log.txt").write_text("ok")
    gpu.outcheck(tmp_path)
    for i in range(7):
        (tmp_path / f"extra-{i}.txt").write_text("x")
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "deep.txt").write_text("x")
    (tmp_path / "bad name.txt").write_text("x")
    with pytest.raises(SystemExit) as failure:
        gpu.outcheck(tmp_path)
    message = str(failure.value)
    assert "at most 8 come back" in message and "deeper than two folders" in message and "bad name.txt" in message


def test_packing_downscales_to_full_chroma_jpeg_and_keeps_licences(tmp_path):
    pack = load("pack_training_data")
    src = tmp_path / "src"
    src.mkdir()
    for i, img in enumerate(synthetic_images(2, height=60, width=80)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(src / f"{i}.png")
    (src / "LICENSE.txt").write_text("CC0")
    info = pack.pack_training_folder(src, tmp_path / "dst", scale=0.5, quality=92)
    assert info["images"] == 2 and info["bytes"] > 0
    with Image.open(tmp_path / "dst" / "0.jpg") as packed:
        assert packed.size == (40, 30) and packed.format == "JPEG" and packed.mode == "RGB"
        assert get_sampling(packed) == 0  # 4:4:4
    assert (tmp_path / "dst" / "LICENSE.txt").read_text() == "CC0"
