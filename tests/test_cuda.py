"""Tests that need a CUDA GPU (``pytest -m cuda``; benchmarks/gpu_pretrain.sh runs them on a device machine): real
bitstreams coded on the GPU, a recipe step on the GPU in each precision, and ``vrtk eval`` on the GPU. Skipped where
torch sees no CUDA device, so CI (CPU only) reports them as skipped."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_cli
from PIL import Image
from test_codec_roundtrip import forward_reconstruction, tiny_variable_rate_model

from vrtk.api import Coder
from vrtk.train.recipe import resolve
from vrtk.train.runner import Trainer, lambdas_for

DEVICE = "cuda"  # a module constant, so the tests themselves can be dry-run on a CPU by setting it
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_compress_and_decompress_on_the_gpu(tmp_path, tiny_images):
    wrapped = tiny_variable_rate_model(tmp_path / "model", ["bm"])
    coder = Coder(wrapped, device=DEVICE)
    assert coder.device.type == DEVICE
    image = tiny_images[0]
    sizes = []
    for lmbda in (0.0025, 0.05):
        data = coder.compress(image, lmbda=lmbda).data
        decoded = coder.decode(data)
        assert decoded.tensor.shape == image.shape
        expected = forward_reconstruction(wrapped.net, image.to(DEVICE), lmbda)
        torch.testing.assert_close(decoded.tensor.cpu(), expected.cpu(), atol=1e-5, rtol=0)
        sizes.append(len(data))
    assert sizes[1] > sizes[0]


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16-autocast"])
def test_a_recipe_step_on_the_gpu(precision, tmp_path):
    config = resolve("bm-finetune", ["profile=test", f"device={DEVICE}", f"precision={precision}"])
    trainer = Trainer(config, tmp_path, lambdas_for(config), resume=False, progress=False)
    assert next(trainer.net.parameters()).device.type == DEVICE
    before = {n: p.detach().clone() for n, p in trainer.net.named_parameters() if p.requires_grad}
    record = trainer.train_step()
    assert math.isfinite(record["loss"]) and record["bpp"] > 0 and math.isfinite(record["psnr"])
    after = dict(trainer.net.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert all(p.dtype == torch.float32 for p in trainer.net.parameters())  # autocast leaves the weights fp32


def test_recipe_and_eval_on_the_gpu(tmp_path, tiny_images):
    code, out, err = run_cli("run", "bm-finetune", "profile=test", f"device={DEVICE}", "precision=tf32",
                             f"out={tmp_path / 'run'}", "--no-progress")
    assert code == 0, err
    model = tmp_path / "run" / "model"
    assert (model / "config.json").is_file()
    data = tmp_path / "images"
    data.mkdir()
    for i, image in enumerate(tiny_images):
        Image.fromarray(image.mul(255).round().byte().permute(1, 2, 0).numpy()).save(data / f"{i}.png")
    code, out, err = run_cli("eval", str(model), "--data", str(data), "--n-points", "2", "--device", DEVICE,
                             "--metrics", "psnr", "--no-progress", "-o", str(tmp_path / "eval.json"))
    assert code == 0, err
    document = json.loads((tmp_path / "eval.json").read_text())
    assert document["vrtk"]["environment"]["device"].startswith(DEVICE)
    results = document["results"]
    assert len(results["bpp"]) == 2 and all(b > 0 for b in results["bpp"])
    assert all(math.isfinite(p) for p in results["psnr-rgb"])
