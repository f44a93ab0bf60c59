"""Encoder-side latent refinement (vrtk.refine): lowers the cost it aims at, writes ordinary files, refuses clearly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY_KWARGS, run_cli
from test_codec_roundtrip import tiny_variable_rate_model

from vrtk.api import Coder
from vrtk.codec import pad
from vrtk.errors import VrtkError
from vrtk.export.view import CodecView
from vrtk.model import load_model, save_model, wrap
from vrtk.rate import use_rate
from vrtk.refine import RefineSettings, RefiningCodec, frozen, loss_lambda, refine, straight_through_rounding
from vrtk.zoo import BaseSpec


def image(seed: int = 3, height: int = 70, width: int = 90) -> torch.Tensor:
    """Smooth structure plus noise: something a codec spends bits on."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    base = torch.stack([torch.sin(6 * xx), torch.cos(5 * yy), xx * yy]) * 0.4 + 0.5
    return (base + 0.05 * torch.randn(3, height, width, generator=gen)).clamp(0, 1)


def fixed_rate_model(folder, arch: str):
    torch.manual_seed(0)
    wrapped = wrap(BaseSpec(arch=arch, weights="random", arch_kwargs=dict(TINY_KWARGS)), [])
    wrapped.lambdas = [0.013]  # as a fixed-rate recipe records it
    wrapped.net.update(force=True)
    return load_model(save_model(wrapped, folder))


def test_refined_files_cost_less_and_decode_with_the_plain_model(tmp_path):
    """Real entropy coding end to end: the refined file is an ordinary file of the same model, other than the
    plain one, and its estimated cost is lower."""
    wrapped = tiny_variable_rate_model(tmp_path / "bm", ["bm"])
    plain = Coder(wrapped)
    refining = Coder(wrapped, refine=RefineSettings(8, lr=0.3))
    x = image()
    for lmbda in (0.0018, 0.02):
        data = refining.compress(x, lmbda=lmbda).data
        last = refining.refiner.last
        assert last.cost_after < last.cost_before and 1 <= last.best_step <= 8
        decoded = plain.decode(data).tensor  # the plain coder decodes it: same fingerprint, same format
        assert decoded.shape == x.shape
        assert data != plain.compress(x, lmbda=lmbda).data


@pytest.mark.parametrize("arch", ["bmshj2018-factorized", "mbt2018-mean"])
def test_every_supported_coding_refines(tmp_path, arch):
    """Factorized (y only) and mean-scale (y and z, rounding around the means) both lower their cost."""
    wrapped = fixed_rate_model(tmp_path / arch, arch)
    coder = Coder(wrapped, refine=RefineSettings(6, lr=0.3))
    data = coder.compress(image(height=64, width=64)).data
    assert coder.refiner.last.cost_after < coder.refiner.last.cost_before
    assert set(coder.refiner.last.latents) == ({"g_a"} if arch == "bmshj2018-factorized" else {"g_a", "h_a"})
    assert Coder(wrapped).decode(data).tensor.shape == (3, 64, 64)


def test_the_cost_is_measured_inside_the_image_not_on_the_padding(tmp_path):
    """A 70x90 image is padded to 128x128: refining against the padding's zeros would waste bits on it."""
    wrapped = tiny_variable_rate_model(tmp_path / "bm", ["bm"])
    view = CodecView(wrapped.net)
    x = image()[None]
    xp, unpadding = pad(x)
    settings = RefineSettings(1, lr=1e-9)  # one step too small to change anything: the encoder's own cost
    with use_rate(wrapped.net, 0.01):
        inside = refine(view, xp, x, unpadding, 0.01, settings).cost_before
        everywhere = refine(view, xp, xp, (0, 0, 0, 0), 0.01, settings).cost_before
    assert inside != pytest.approx(everywhere)


def test_the_short_form_takes_a_number_of_steps(tmp_path):
    import vrtk

    wrapped = tiny_variable_rate_model(tmp_path / "bm", ["bm"])
    data = vrtk.compress(image(), wrapped, lmbda=0.01, refine=2)
    assert vrtk.api.decompress_tensor(data, wrapped).tensor.shape == (3, 70, 90)
    with pytest.raises(VrtkError, match="steps"):
        vrtk.compress(image(), wrapped, lmbda=0.01, refine=-1)


def test_refinement_leaves_the_model_as_it_was(tmp_path):
    wrapped = tiny_variable_rate_model(tmp_path / "bm", ["bm"])
    before = {k: v.clone() for k, v in wrapped.net.state_dict().items()}
    flags = [p.requires_grad for p in wrapped.net.parameters()]
    Coder(wrapped, refine=RefineSettings(3, lr=0.3)).compress(image(), lmbda=0.01)
    assert all(torch.equal(before[k], v) for k, v in wrapped.net.state_dict().items())
    assert [p.requires_grad for p in wrapped.net.parameters()] == flags
    entropy = [wrapped.net.entropy_bottleneck, wrapped.net.gaussian_conditional]
    with straight_through_rounding(entropy), frozen(wrapped.net):
        assert all("quantize" in vars(m) for m in entropy)
        assert not any(p.requires_grad for p in wrapped.net.parameters())
    assert not any("quantize" in vars(m) for m in entropy)  # CompressAI's own method again
    assert [p.requires_grad for p in wrapped.net.parameters()] == flags


def test_straight_through_rounding_rounds_forward_and_passes_gradients():
    from compressai.entropy_models import GaussianConditional

    conditional = GaussianConditional(None)
    y = torch.tensor([0.2, 1.7, -2.4], requires_grad=True)
    means = torch.tensor([0.5, 0.0, 0.1])
    with straight_through_rounding([conditional]):
        out = conditional.quantize(y, "dequantize", means)
        out.sum().backward()
    assert torch.allclose(out, torch.round(y - means) + means)
    assert torch.equal(y.grad, torch.ones(3))


def test_the_loss_lambda_comes_from_the_settings_the_rate_or_the_model(tmp_path):
    variable = tiny_variable_rate_model(tmp_path / "bm", ["bm"])
    assert loss_lambda(variable, 0.004, RefineSettings(1)) == 0.004
    assert loss_lambda(variable, 0.004, RefineSettings(1, lmbda=0.02)) == 0.02
    fixed = fixed_rate_model(tmp_path / "fixed", "bmshj2018-hyperprior")
    assert loss_lambda(fixed, None, RefineSettings(1)) == 0.013
    zoo = wrap(BaseSpec(arch="bmshj2018-hyperprior", quality=3, weights="random", arch_kwargs=dict(TINY_KWARGS)))
    with pytest.raises(VrtkError, match="--refine-lambda"):
        loss_lambda(zoo, None, RefineSettings(1))  # random weights: no trained lambda to assume
    zoo.base.weights = "zoo"
    assert loss_lambda(zoo, None, RefineSettings(1)) == 0.0067  # CompressAI's MSE lambda of quality 3


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"steps": True}, "steps"),
    ({"steps": 3, "lr": -1.0}, "lr"), ({"steps": 3, "lr": math.nan}, "lr"), ({"steps": 3, "lmbda": 0.0}, "lmbda"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(VrtkError, match=match):
        RefineSettings(**kwargs)


def test_models_refinement_cannot_serve_are_refused(tmp_path):
    ssim = wrap(BaseSpec(arch="bmshj2018-hyperprior", metric="ms-ssim", weights="random",
                         arch_kwargs=dict(TINY_KWARGS)))
    with pytest.raises(VrtkError, match="ms-ssim"):
        RefiningCodec(ssim, CodecView(ssim.net), RefineSettings(1))
    context = wrap(BaseSpec(arch="mbt2018", weights="random", arch_kwargs=dict(TINY_KWARGS)))
    with pytest.raises(VrtkError, match="autoregressive"):
        RefiningCodec(context, CodecView(context.net), RefineSettings(1))


def test_cli_compress_and_eval_refine(tmp_path):
    folder = tmp_path / "bm"
    tiny_variable_rate_model(folder, ["bm"])
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.fromarray((image().permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(images / "a.png")
    code, out, err = run_cli("compress", str(images / "a.png"), "-o", str(tmp_path / "a.vrtk"), "--model",
                             str(folder), "--lambda", "0.01", "--refine", "3", "--refine-lr", "0.3")
    assert code == 0, err
    code, _, err = run_cli("decompress", str(tmp_path / "a.vrtk"), "-o", str(tmp_path / "a.png"), "--model",
                           str(folder))
    assert code == 0, err
    code, _, err = run_cli("eval", str(folder), "--data", str(images), "--lambdas", "0.002,0.02", "--refine", "2",
                           "--repeats", "1", "--no-macs", "--metrics", "psnr", "--no-progress",
                           "-o", str(tmp_path / "r.json"), "--per-image", str(tmp_path / "per.json"))
    assert code == 0, err
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["vrtk"]["refine"] == {"steps": 2, "lr": 0.01, "lmbda": None}
    records = json.loads((tmp_path / "per.json").read_text())
    records = records["images"] if isinstance(records, dict) else records
    assert all(r["refine"]["cost_after"] <= r["refine"]["cost_before"] for r in records)
    code, _, err = run_cli("compress", str(images / "a.png"), "-o", str(tmp_path / "b.vrtk"), "--model",
                           str(folder), "--refine-lr", "0.05")
    assert code == 2 and "--refine STEPS" in err
    code, _, err = run_cli("eval", "--codec", "jpeg", "--data", str(images), "--refine", "2")
    assert code == 2 and "--refine" in err


def test_refinement_memory_is_checked_before_any_work(tmp_path):
    """Backward passes keep every layer's output: a budget plain coding fits in can be too small to refine."""
    from vrtk import coding_limits
    from vrtk.errors import ResourceError

    wrapped = tiny_variable_rate_model(tmp_path / "bm", ["bm"])
    plain = coding_limits.coding_bytes(wrapped.net, 90, 70, 0.01)
    refining = coding_limits.coding_bytes(wrapped.net, 90, 70, 0.01, refining=True)
    assert refining > plain
    budget = (plain + refining) // 2
    Coder(wrapped, memory_budget=budget).compress(image(), lmbda=0.01)
    with pytest.raises(ResourceError, match="refining and encoding a 90x70 image"):
        Coder(wrapped, memory_budget=budget, refine=RefineSettings(2)).compress(image(), lmbda=0.01)
