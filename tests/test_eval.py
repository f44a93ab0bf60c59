"""``vrtk eval``: real bitstreams on tiny models and small images, checked against an independent recomputation."""

from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from PIL import Image
from test_eval_probe import PROBE_LAMBDAS, make_variable_model, probe_registry

from vrtk.data import synthetic_images
from vrtk.eval.results import SCHEMA_KEYS, load_results
from vrtk.plugin_manager import Registry, set_registry

SMALL = (70, 90)  # below pytorch_msssim's 161 px: MS-SSIM must be skipped with a note
LARGE = (176, 168)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    imgs = synthetic_images(2, *SMALL, seed=1) + synthetic_images(1, *LARGE, seed=2)
    for i, img in enumerate(imgs):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"im{i}.png")
    return folder


@pytest.fixture
def fixed_model(tmp_path):
    """A tiny fixed-rate model folder (random weights, trained lambda recorded as 0.0067)."""
    from vrtk.model import save_model, wrap
    from vrtk.zoo import BaseSpec

    set_registry(Registry(autoload=False))
    torch.manual_seed(0)
    wrapped = wrap(BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs={"N": 8, "M": 12}))
    wrapped.lambdas = [0.0067]
    wrapped.net.update(force=True)
    return save_model(wrapped, tmp_path / "fixed")


def test_fixed_model_matches_an_independent_recomputation(images, fixed_model, tmp_path):
    from vrtk.codec import pad, psnr, unpad
    from vrtk.flops import dense_kmacs_per_pixel
    from vrtk.images import list_images, load_image
    from vrtk.model import load_model

    out, per_image = tmp_path / "r.json", tmp_path / "per.json"
    code, stdout, stderr = run_cli("eval", str(fixed_model), "--data", str(images), "-o", str(out),
                                   "--per-image", str(per_image), "--repeats", "2", "--no-progress")
    assert code == 0, stderr
    assert "MS-SSIM left out for 2 of 3" in stderr
    data = load_results(out)
    results, meta = data["results"], data["vrtk"]
    assert set(SCHEMA_KEYS) <= set(results) and data["name"] == "fixed" and data["description"]
    assert all(len(v) == 1 for v in results.values())
    assert results["lambda"] == [0.0067] and meta["variable_rate"] is False
    assert meta["group"] == "bmshj2018-hyperprior (mse, fixed-rate)"
    assert meta["command"].startswith("vrtk eval ") and "--repeats 2" in meta["command"]
    assert meta["dataset"]["ms_ssim_skipped"] == ["im0.png", "im1.png"]

    wrapped = load_model(fixed_model)
    assert meta["model"]["fingerprint"] == wrapped.fingerprint()
    records = json.loads(per_image.read_text())["images"]
    assert [r["image"] for r in records] == ["im0.png", "im1.png", "im2.png"]
    with torch.no_grad():
        for path, record in zip(list_images(images), records, strict=True):
            x = load_image(path).tensor[None]
            xp, unpadding = pad(x)
            coded = wrapped.net.compress(xp)
            nbytes = sum(len(s[0]) for s in coded["strings"])
            x_hat = unpad(wrapped.net.decompress(coded["strings"], coded["shape"])["x_hat"], unpadding)
            assert record["bytes"] == nbytes
            assert record["bpp"] == pytest.approx(nbytes * 8 / (x.shape[-1] * x.shape[-2]))
            assert record["psnr"] == pytest.approx(psnr(x_hat.clamp(0, 1).mul(255).round().div(255), x), abs=1e-6)
            assert (record["ms_ssim"] is None) == (min(x.shape[-2:]) < 161)
    assert results["bpp"][0] == pytest.approx(statistics.fmean(r["bpp"] for r in records))
    assert results["psnr-rgb"][0] == pytest.approx(statistics.fmean(r["psnr"] for r in records))
    assert results["ms-ssim-rgb"][0] == pytest.approx(records[2]["ms_ssim"])
    assert 0 < results["ms-ssim-rgb"][0] <= 1
    assert results["encoding_time"][0] > 0 and results["decoding_time"][0] > 0
    pixels = sum(r["width"] * r["height"] for r in records)
    assert results["encoding_mps"][0] == pytest.approx(pixels / sum(r["encoding_time"] for r in records) / 1e6)
    assert results["peak_memory_mb"][0] > 0
    # Dense MACs per pixel do not depend on content: they must equal the model's figure on a grey image.
    dense = dense_kmacs_per_pixel(wrapped.net)
    assert results["kmacs_encoder_dense"][0] == pytest.approx(dense["encoder"])
    assert results["kmacs_decoder_dense"][0] == pytest.approx(dense["decoder"])
    assert 0 < results["kmacs_encoder_effective"][0] <= results["kmacs_encoder_dense"][0]
    assert 0 < results["kmacs_decoder_effective"][0] <= results["kmacs_decoder_dense"][0]
    assert "bpp" in stdout and "results:" in stdout


def test_variable_rate_sweep(images, tmp_path):
    make_variable_model(tmp_path / "var")
    out = tmp_path / "var.json"
    code, _, stderr = run_cli("eval", str(tmp_path / "var"), "--data", str(images), "--n-points", "3",
                              "--repeats", "1", "-o", str(out), "--no-progress")
    assert code == 0, stderr
    data = load_results(out)
    results, meta = data["results"], data["vrtk"]
    lams = results["lambda"]
    assert len(lams) == 3 and lams[0] == pytest.approx(PROBE_LAMBDAS[0]) and lams[-1] == pytest.approx(PROBE_LAMBDAS[1])
    assert lams[1] == pytest.approx(math.sqrt(PROBE_LAMBDAS[0] * PROBE_LAMBDAS[1]))  # even in log lambda
    assert meta["variable_rate"] is True and meta["group"] == "var"
    assert results["bpp"] == sorted(results["bpp"]) and results["bpp"][0] < results["bpp"][-1]
    assert meta["model"]["plugins"][0]["name"] == "probe"
    assert meta["params"]["plugin"] == 2
    # Sparsity from the plugin hook, one dict per point, averaged over images.
    sparsity = meta["sparsity"]
    assert len(sparsity) == 3 and set(sparsity[0]) == {"probe/g_a/sparsity", "probe/g_s/sparsity"}
    assert all(0 <= v <= 1 for point in sparsity for v in point.values())
    assert sparsity[0]["probe/g_s/sparsity"] > sparsity[-1]["probe/g_s/sparsity"]  # fewer zero symbols at high rate
    # More zero symbols at low rate also means fewer effective decoder MACs.
    assert results["kmacs_decoder_effective"][0] < results["kmacs_decoder_effective"][-1]


def test_explicit_lambdas_and_range_check(images, tmp_path):
    make_variable_model(tmp_path / "var")
    out = tmp_path / "l.json"
    code, _, stderr = run_cli("eval", str(tmp_path / "var"), "--data", str(images), "--lambdas", "0.003,0.01",
                              "--limit", "1", "--repeats", "1", "--no-macs", "-o", str(out), "--no-progress")
    assert code == 0, stderr
    data = load_results(out)
    assert data["results"]["lambda"] == [0.003, 0.01]
    assert data["vrtk"]["dataset"]["names"] == ["im0.png"]
    assert "kmacs_encoder_dense" not in data["results"]
    code, _, stderr = run_cli("eval", str(tmp_path / "var"), "--data", str(images), "--lambda", "0.5",
                              "--no-progress")
    assert code == 2 and "outside the trained range" in stderr


def test_inference_options(images, tmp_path):
    make_variable_model(tmp_path / "var")
    args = ("eval", str(tmp_path / "var"), "--data", str(images), "--lambda", "0.002", "--limit", "1",
            "--repeats", "1", "--no-macs", "--no-progress", "--json")
    code, plain, stderr = run_cli(*args)
    assert code == 0, stderr
    code, boosted, stderr = run_cli(*args, "--option", "probe.boost=3")
    assert code == 0, stderr
    plain, boosted = json.loads(plain), json.loads(boosted)
    assert boosted["vrtk"]["options"] == {"probe.boost": 3}
    assert boosted["name"] == "var [probe.boost=3]"
    assert boosted["results"]["bpp"][0] > plain["results"]["bpp"][0]
    code, _, stderr = run_cli(*args, "--option", "nobody.knob=1")
    assert code == 2 and "nobody.knob" in stderr


def test_fixed_model_refuses_another_rate(images, fixed_model):
    code, _, stderr = run_cli("eval", str(fixed_model), "--data", str(images), "--lambda", "0.1", "--no-progress")
    assert code == 2 and "fixed-rate" in stderr


@pytest.mark.parametrize("codec,fmt", [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_classical_anchor(images, tmp_path, codec, fmt):
    from vrtk.images import list_images, load_image, to_pil

    out, per_image = tmp_path / f"{codec}.json", tmp_path / "per.json"
    code, _, stderr = run_cli("eval", "--codec", codec, "--data", str(images), "--qualities", "20,80",
                              "--repeats", "1", "-o", str(out), "--per-image", str(per_image), "--no-progress")
    assert code == 0, stderr
    data = load_results(out)
    results = data["results"]
    assert set(SCHEMA_KEYS) <= set(results) and results["quality"] == [20, 80]
    assert data["name"] == fmt and data["vrtk"]["kind"] == "classical" and "Pillow" in data["description"]
    assert results["bpp"][0] < results["bpp"][1] and results["psnr-rgb"][0] < results["psnr-rgb"][1]
    assert 0 < results["ms-ssim-rgb"][0] < results["ms-ssim-rgb"][1] <= 1
    records = json.loads(per_image.read_text())["images"]
    first = load_image(list_images(images)[0]).tensor
    buffer = io.BytesIO()
    to_pil(first).save(buffer, format=fmt, quality=20)
    assert records[0]["quality"] == 20 and records[0]["bytes"] == len(buffer.getvalue())


def test_eval_argument_errors(images, fixed_model):
    assert run_cli("eval", "--data", str(images))[0] == 2
    assert run_cli("eval", str(fixed_model), "--codec", "jpeg", "--data", str(images))[0] == 2
    assert run_cli("eval", "--codec", "jpeg", "--data", str(images), "--lambda", "0.01")[0] == 2
    code, _, stderr = run_cli("eval", "--codec", "jpeg", "--data", str(images / "missing"))
    assert code == 2 and "not a directory" in stderr


def test_storage_numbers_equal_the_file_sizes(tmp_path):
    from vrtk.eval.storage import model_storage

    wrapped = make_variable_model(tmp_path / "var")
    probe_registry()
    folder = tmp_path / "var"
    storage = model_storage(wrapped, folder)
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert storage["files"] == files and storage["folder_bytes"] == sum(files.values())
    # A full checkpoint's payload (file minus the 8-byte length and the JSON header) is every tensor at fp32.
    weights = (folder / "model.safetensors").read_bytes()
    header = int.from_bytes(weights[:8], "little")
    assert storage["full_bytes_fp32"] == len(weights) - 8 - header
    assert storage["weights"] == "full"
    assert storage["plugin_params"] == 2 and storage["plugin_bytes_fp32"] == 8
    assert storage["params"] == sum(p.numel() for p in wrapped.net.parameters())


KODAK = Path("/work/shared/data/kodak")
PUBLISHED_WEBP = Path("/work/shared/data/reference-rd/kodak/webp.json")


@pytest.mark.skipif(not (KODAK.is_dir() and PUBLISHED_WEBP.is_file()), reason="Kodak or CompressAI's JSONs missing")
def test_webp_on_kodak_matches_compressai_published_numbers():
    """Same codec, same images, same convention: our bpp and PSNR equal CompressAI's published WebP at q=50."""
    from vrtk.codec import psnr
    from vrtk.eval.classical import decode, encode
    from vrtk.eval.evaluate import load_eval_images
    from vrtk.images import to_pil

    published = json.loads(PUBLISHED_WEBP.read_text())["results"]
    index = list(range(5, 100, 5)).index(50)  # CompressAI's Pillow sweep is quality 5..95 in steps of 5
    bpps, psnrs = [], []
    for image in load_eval_images(KODAK):
        data = encode(to_pil(image.tensor), "webp", 50)
        bpps.append(len(data) * 8 / image.pixels)
        psnrs.append(psnr(decode(data)[None], image.tensor[None]))
    assert statistics.fmean(bpps) == pytest.approx(published["bpp"][index], rel=1e-9)
    assert statistics.fmean(psnrs) == pytest.approx(published["psnr-rgb"][index], abs=1e-5)
