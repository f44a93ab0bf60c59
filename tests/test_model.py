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
