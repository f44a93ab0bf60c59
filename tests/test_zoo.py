"""Base models: the name map, zoo weights (cache, offline error), local checkpoints, user classes."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from compressai.models import FactorizedPriorReLU, ScaleHyperprior
from conftest import TINY_KWARGS, run_cli

from vrtk.errors import ModelError
from vrtk.zoo import BaseSpec, build_base, get_arch, list_archs, zoo_cache_path, zoo_url

ALL = ["bmshj2018-factorized", "bmshj2018-factorized-relu", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018",
       "cheng2020-anchor", "cheng2020-attn"]


def test_every_compressai_image_architecture_is_listed_with_sizes():
    code, out, _ = run_cli("models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and set(ALL) <= set(rows)
    assert rows["bmshj2018-hyperprior"]["sizes"]["1"] == {"N": 128, "M": 192}
    assert rows["bmshj2018-hyperprior"]["sizes"]["8"] == {"N": 192, "M": 320}
    assert rows["cheng2020-attn"]["qualities"] == [1, 2, 3, 4, 5, 6]


def test_wildcards_and_underscores():
    assert [s.name for s in list_archs("*hyper*")] == ["bmshj2018-hyperprior", "bmshj2018-hyperprior-slim"]
    assert get_arch("mbt2018_mean").name == "mbt2018-mean"
    assert {s.name for s in list_archs("bmshj2018_factorized*")} == {
        "bmshj2018-factorized", "bmshj2018-factorized-relu", "bmshj2018-factorized-slim",
        "bmshj2018-factorized-relu-slim"}  # vrtk's slim architectures (vrtk/slim_arch.py) match too


def test_factorized_relu_is_the_relu_model():
    net = build_base(BaseSpec("bmshj2018-factorized-relu", quality=1, weights="random"))
    assert type(net) is FactorizedPriorReLU


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelError, match="Did you mean: bmshj2018-hyperprior"):
        get_arch("bmshj2018-hyperprio")
    code, _, err = run_cli("wrap", "nosuchmodel", "--weights", "random")
    assert code == 2 and "Unknown model" in err and "Traceback" not in err


def test_offline_zoo_names_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    code, _, err = run_cli("wrap", "bmshj2018-hyperprior", "-q", "3")
    assert code == 2
    assert "bmshj2018-hyperprior-3-6d87be32.pth.tar" in err and "--weights random" in err
    assert str(tmp_path) in err


def _old_style(state: dict) -> dict:
    """Key names as saved from a DataParallel-wrapped model (CompressAI's zoo strips the prefix)."""
    return {"module." + key: value for key, value in state.items()}


def test_cached_zoo_file_is_used_and_old_keys_are_renamed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    source = ScaleHyperprior(**TINY_KWARGS)
    cached = zoo_cache_path(zoo_url(get_arch("bmshj2018-hyperprior"), "mse", 2))
    cached.parent.mkdir(parents=True)
    torch.save(_old_style(source.state_dict()), cached)
    net = build_base(BaseSpec("bmshj2018-hyperprior", quality=2))
    assert torch.equal(net.g_a[0].weight, source.g_a[0].weight)
    assert not net.training


@pytest.mark.parametrize("wrapper", [None, "state_dict", "network"])
def test_local_checkpoint_formats(tmp_path, wrapper):
    torch.manual_seed(4)
    source = ScaleHyperprior(**TINY_KWARGS)
    state = source.state_dict()
    path = tmp_path / "ckpt.pth.tar"
    torch.save({wrapper: state, "epoch": 3} if wrapper else state, path)
    net = build_base(BaseSpec("bmshj2018-hyperprior", weights=str(path)))
    assert torch.equal(net.g_s[0].weight, source.g_s[0].weight)


def test_checkpoint_of_another_architecture_says_which(tmp_path):
    from compressai.models import MeanScaleHyperprior

    path = tmp_path / "mean.pt"
    torch.save(MeanScaleHyperprior(**TINY_KWARGS).state_dict(), path)
    with pytest.raises(ModelError, match="look like a mbt2018-mean checkpoint"):
        build_base(BaseSpec("bmshj2018-hyperprior", quality=1, weights=str(path)))


def test_checkpoint_of_another_size_lists_mismatches(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(ScaleHyperprior(**TINY_KWARGS).state_dict(), path)
    with pytest.raises(ModelError, match="Its sizes are N=8, M=12"):
        build_base(BaseSpec("bmshj2018-hyperprior", quality=1, weights=str(path)))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"g_a.0.weight": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(ModelError, match="only plain tensors") as info:
        build_base(BaseSpec("bmshj2018-hyperprior", weights=str(path)))
    assert "weights_only" not in str(info.value)  # never advise loading an untrusted file with weights_only=False
    assert not marker.exists()


def test_user_class_with_kwargs(tmp_path, monkeypatch):
    (tmp_path / "mycodecs.py").write_text(
        "from compressai.models import ScaleHyperprior\n"
        "class MyHyperprior(ScaleHyperprior):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run_cli("wrap", "x", "--arch", "mycodecs:MyHyperprior", "--arch-kwargs", '{"N":8,"M":12}',
                             "--weights", "random", "--json")
    assert code == 0, err
    facts = json.loads(out)
    assert facts["base"]["arch"] == "mycodecs:MyHyperprior" and facts["base"]["arch_kwargs"] == TINY_KWARGS
    sys.modules.pop("mycodecs", None)


def test_bad_arch_kwargs_is_a_clear_error():
    code, _, err = run_cli("wrap", "bmshj2018-hyperprior", "--weights", "random", "--arch-kwargs", "{N:8}")
    assert code == 2 and "--arch-kwargs is not JSON" in err
