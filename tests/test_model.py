"""Wrapped-model checkpoints: delta vs full, rebuild checks, and the wrap command."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_KWARGS, run_cli

from vrtk.errors import ModelError
from vrtk.model import load_model, save_model, wrap
from vrtk.zoo import BaseSpec, build_base


def test_random_base_is_saved_full_and_reloads(tiny_spec, tmp_path):
    wrapped = wrap(tiny_spec)
    wrapped.net.update(force=True)
    save_model(wrapped, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["weights"] == "full" and config["base"]["arch_kwargs"] == TINY_KWARGS
    assert load_model(tmp_path / "m").fingerprint() == wrapped.fingerprint()


def test_delta_refuses_a_changed_base(tmp_path):
    torch.manual_seed(1)
    base_file = tmp_path / "base.pt"
    torch.save(build_base(BaseSpec("bmshj2018-hyperprior", weights="random", arch_kwargs=TINY_KWARGS)).state_dict(),
               base_file)
    wrapped = wrap(BaseSpec("bmshj2018-hyperprior", weights=str(base_file), arch_kwargs=dict(TINY_KWARGS)))
    with torch.no_grad():
        wrapped.net.g_s[0].weight.add_(0.1)  # fine-tuned: must be in the delta
    wrapped.net.update(force=True)
    save_model(wrapped, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["weights"] == "delta"
    assert torch.equal(load_model(tmp_path / "m").net.g_s[0].weight, wrapped.net.g_s[0].weight)
    torch.manual_seed(2)
    torch.save(build_base(BaseSpec("bmshj2018-hyperprior", weights="random", arch_kwargs=TINY_KWARGS)).state_dict(),
               base_file)
    with pytest.raises(ModelError, match="base weights .* differ"):
        load_model(tmp_path / "m")


def test_newer_format_and_junk_are_refused(tiny_spec, tmp_path):
    save_model(wrap(tiny_spec), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ModelError, match="newer than this vrtk"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"junk")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="unreadable weights"):
        load_model(tmp_path / "m")


def test_wrap_prints_sites_params_and_macs(tmp_path):
    code, out, err = run_cli("wrap", "bmshj2018-hyperprior", "--weights", "random", "--arch-kwargs",
                             '{"N":8,"M":12}', "--plugins", "bm", "-o", str(tmp_path / "w"))
    assert code == 0, err
    assert "trainable params:" in out and "|| all params:" in out and "|| trainable%:" in out
    assert "dense kMACs/pixel: encoder" in out and "bm" in out
    assert (tmp_path / "w" / "config.json").is_file()


def test_wrap_json_and_dry_run():
    code, out, err = run_cli("wrap", "bmshj2018-hyperprior", "-q", "1", "--weights", "random", "--plugins", "bm",
                             "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["dry_run"] and plan["plugins"][0]["plugin"] == "bm" and plan["plugins"][0]["targets"]
    code, out, _ = run_cli("wrap", "bmshj2018-hyperprior", "-q", "1", "--weights", "random", "--json")
    facts = json.loads(out)
    assert facts["trainable_params"] == facts["all_params"] > 4_000_000
    assert 40 < facts["dense_kmacs_per_pixel"]["encoder"] < 50


def test_delta_with_resized_entropy_tables_loads(tmp_path):
    """Fine-tuning changes the size of the entropy coder's tables; the delta must still load over the base."""
    torch.manual_seed(1)
    base = build_base(BaseSpec("bmshj2018-hyperprior", weights="random", arch_kwargs=TINY_KWARGS))
    base.update(force=True)
    torch.save(base.state_dict(), tmp_path / "base.pt")
    wrapped = wrap(BaseSpec("bmshj2018-hyperprior", weights=str(tmp_path / "base.pt"), arch_kwargs=dict(TINY_KWARGS)))
    with torch.no_grad():
        wrapped.net.entropy_bottleneck.quantiles[:, :, 0] -= 5.0  # wider support: longer CDF tables
        wrapped.net.entropy_bottleneck.quantiles[:, :, 2] += 5.0
    wrapped.net.update(force=True)
    assert wrapped.net.entropy_bottleneck._quantized_cdf.shape != base.entropy_bottleneck._quantized_cdf.shape
    save_model(wrapped, tmp_path / "m")
    assert load_model(tmp_path / "m").fingerprint() == wrapped.fingerprint()


def test_convert_to_half_halves_the_folder_and_codes_end_to_end(tmp_path):
    """`vrtk convert --half`: fp16 parameters, exact buffers, a new folder; the result compresses and decompresses
    with real entropy coding, and its reconstruction stays within fp16 rounding of the fp32 model's."""
    from vrtk.api import Coder
    from vrtk.data import synthetic_images

    torch.manual_seed(0)
    wrapped = wrap(BaseSpec("bmshj2018-hyperprior", weights="random", arch_kwargs={"N": 16, "M": 24}), ["bm"])
    wrapped.net.update(force=True)
    save_model(wrapped, tmp_path / "fp32")
    code, out, err = run_cli("convert", str(tmp_path / "fp32"), "-o", str(tmp_path / "fp16"), "--half")
    assert code == 0, err
    assert "new model fingerprint" in out
    size = {name: (tmp_path / name / "model.safetensors").stat().st_size for name in ("fp32", "fp16")}
    param_bytes = sum(p.numel() * 4 for p in wrapped.net.parameters())  # entropy-coder tables (int32) stay
    assert abs(size["fp16"] - (size["fp32"] - param_bytes / 2)) < 0.01 * size["fp32"]
    config = json.loads((tmp_path / "fp16" / "config.json").read_text())
    assert config["parameters_dtype"] == "float16"
    half = load_model(tmp_path / "fp16")
    state = half.net.state_dict()
    assert state["gaussian_conditional.likelihood_lower_bound.bound"].item() == pytest.approx(1e-9)
    original = wrapped.net.state_dict()
    conv = next(k for k, v in original.items() if k.endswith("weight") and v.dim() == 4)
    assert state[conv].dtype == torch.float32
    torch.testing.assert_close(state[conv], original[conv].half().float(), rtol=0, atol=0)
    image = synthetic_images(1, 64, 64, seed=1)[0]
    lmbda = wrapped.middle_lambda()
    fp32, fp16 = (Coder(m).decode(Coder(m).compress(image, lmbda=lmbda).data).tensor for m in (wrapped, half))
    assert fp16.shape == (3, 64, 64)
    assert (fp16 - fp32).abs().mean() < 0.01
    # refuses to write into the input or a non-empty folder
    code, _, err = run_cli("convert", str(tmp_path / "fp16"), "-o", str(tmp_path / "fp16"), "--half")
    assert code != 0 and "never overwritten" in err
