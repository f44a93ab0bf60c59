"""Hostile model folders (issue 17): a folder never makes vrtk import code it names, every malformed config.json or
weights file ends in a ModelError naming the problem, and absurd sizes are refused before anything is built.

Every hostile folder is made here from a tiny saved model; a canary module on sys.path records whether it was
ever imported.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import pytest
import torch
from conftest import TINY_KWARGS, run_cli
from PIL import Image
from safetensors.torch import load_file, save_file

from vrtk import api
from vrtk.errors import ModelError, VrtkError
from vrtk.model import load_model, resolve_model, save_model, wrap
from vrtk.zoo import BaseSpec

CANARY = "vrtk_hostile_canary"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny bm model folder (bmshj2018-hyperprior N=8, M=12) and its config."""
    torch.manual_seed(0)
    wrapped = wrap(BaseSpec("bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS)), ["bm"])
    wrapped.net.update(force=True)
    folder = save_model(wrapped, tmp_path_factory.mktemp("hostile") / "model")
    return folder, json.loads((folder / "config.json").read_text())


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """A module that writes a marker file when imported (also as ``CANARY.__main__``), importable from sys.path.
    Its class X is a ScaleHyperprior, so a folder naming it loads when code is allowed."""
    marker = tmp_path / "canary-ran"
    package = tmp_path / "canary-path" / CANARY
    package.mkdir(parents=True)
    body = (f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
            "from compressai.models import ScaleHyperprior\n\n\nclass X(ScaleHyperprior):\n    pass\n")
    (package / "__init__.py").write_text(body)
    (package / "__main__.py").write_text(body)
    monkeypatch.syspath_prepend(str(package.parent))
    yield marker
    for name in [n for n in sys.modules if n.startswith(CANARY)]:
        del sys.modules[name]


def variant(saved, tmp_path, change=None, raw: bytes | None = None, tensors=None, name="m"):
    """A copy of the saved folder with its config changed in place by ``change``, replaced by ``raw`` bytes, or
    its tensors changed by ``tensors``."""
    source, config = saved
    folder = tmp_path / name
    shutil.copytree(source, folder)
    if raw is not None:
        (folder / "config.json").write_bytes(raw)
    elif change is not None:
        config = json.loads(json.dumps(config))
        change(config)
        (folder / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        state = load_file(str(folder / "model.safetensors"))
        tensors(state)
        save_file(state, str(folder / "model.safetensors"))
    return folder


def peak_memory_of(action) -> int:
    """Bytes the process's resident size grew to above where it was, while ``action()`` ran (any allocator: torch
    tensors too, which tracemalloc does not see). Linux only: resets the kernel's peak counter first."""
    def status(field):
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field))

    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = status("VmRSS:")
    action()
    return status("VmHWM:") - before


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak counter")


def set_arch(arch):
    return lambda c: c["base"].update(arch=arch)


# -- 1. no code from a folder ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [f"{CANARY}:X", f"{CANARY}.__main__:X", "this:X", "unittest.__main__:X",
                                  "os:system", "subprocess:Popen", "torch.nn:Linear"])
def test_a_class_named_by_a_folder_is_never_imported(saved, tmp_path, canary, arch):
    module = arch.split(":")[0]
    already = module in sys.modules
    folder = variant(saved, tmp_path, set_arch(arch))
    for load in (lambda: load_model(folder), lambda: resolve_model(str(folder)), lambda: api.Coder(str(folder))):
        with pytest.raises(ModelError, match="--allow-code") as info:
            load()
        assert "allow_code=True" in str(info.value) and arch in str(info.value)
    assert not canary.exists(), "the canary module ran"
    assert already or module not in sys.modules


def test_allow_code_imports_the_class_the_folder_names(saved, tmp_path, canary):
    folder = variant(saved, tmp_path, set_arch(f"{CANARY}:X"))
    wrapped = load_model(folder, allow_code=True)
    assert type(wrapped.net).__name__ == "X" and canary.read_text() == f"{CANARY}\n"


def test_a_registered_class_spelled_as_a_path_needs_no_flag(saved, tmp_path):
    folder = variant(saved, tmp_path, set_arch("compressai.models:ScaleHyperprior"))
    assert type(load_model(folder).net).__name__ == "ScaleHyperprior"


def test_the_cli_names_the_flag_and_the_flag_opens_the_gate(saved, tmp_path, canary, tiny_images):
    folder = variant(saved, tmp_path, set_arch(f"{CANARY}:X"))
    image = tmp_path / "a.png"
    Image.fromarray(tiny_images[0].mul(255).round().byte().permute(1, 2, 0).numpy()).save(image)
    out = tmp_path / "a.vrtk"
    for argv in (["compress", str(image), "-o", str(out), "--model", str(folder)],
                 ["decompress", str(out), "-o", str(tmp_path / "b.png"), "--model", str(folder)],
                 ["convert", str(folder), "-o", str(tmp_path / "converted")],
                 ["wrap", str(folder), "--plugins", "ecg"]):
        code, _, stderr = run_cli(*argv)
        assert code == 2 and "--allow-code" in stderr and "Traceback" not in stderr, (argv, stderr)
        assert not canary.exists()
    code, _, stderr = run_cli("compress", str(image), "-o", str(out), "--model", str(folder), "--allow-code",
                              "--lambda", "0.01")
    assert code == 0, stderr
    assert canary.exists()


def test_a_recipe_cannot_load_such_a_folder_without_the_flag(saved, tmp_path, canary):
    from vrtk.train.recipe import resolve
    from vrtk.train.runner import run_recipe

    folder = variant(saved, tmp_path, set_arch(f"{CANARY}:X"))
    config = resolve("pretrain", ["profile=test", f"model={folder}", f"out={tmp_path / 'run'}"])
    with pytest.raises(VrtkError, match="--allow-code"):
        run_recipe(config, progress=False)
    assert not canary.exists() and not (tmp_path / "run").exists()


# -- 3. every malformed config.json: a ModelError naming the problem -------------------------------------------
def _lambdas(values):
    return lambda c: c["rate"].update(lambdas=values)


def _bm(**settings):
    return lambda c: c["plugins"][0]["config"].update(settings)


MALFORMED = {
    "arch is a number": (set_arch(5), "base.arch must be an architecture name"),
    "unknown arch": (set_arch("no-such-net"), "Unknown model"),
    "missing base": (lambda c: c.pop("base"), "'base' must be an object"),
    "base is a list": (lambda c: c.update(base=[1]), "'base' must be an object"),
    "plugins is a string": (lambda c: c.update(plugins="bm"), "'plugins' must be a list"),
    "plugin entry is a string": (lambda c: c.update(plugins=["bm"]), r"plugins\[0\] must be an object"),
    "plugin config is a list": (lambda c: c["plugins"][0].update(config=[1]), r"config must be an object"),
    "unknown plugin": (lambda c: c["plugins"][0].update(name="nosuch"), "nosuch"),
    "format_version text": (lambda c: c.update(format_version="x"), "format_version must be a positive integer"),
    "format_version float": (lambda c: c.update(format_version=1.5), "format_version must be a positive integer"),
    "format_version missing": (lambda c: c.pop("format_version"), "format_version must be a positive integer"),
    "format_version newer": (lambda c: c.update(format_version=99), "newer than this vrtk"),
    "format wrong": (lambda c: c.update(format="other"), "not a vrtk model config"),
    "lambdas text": (_lambdas(["x"]), "is not a lambda"),
    "lambdas negative and zero": (_lambdas([-1, 0]), "-1 is not a lambda"),
    "lambdas huge": (_lambdas([1e300]), "is not a lambda"),
    "too many lambdas": (_lambdas([0.01] * 10_000), "at most 256"),
    "rate is a list": (lambda c: c.update(rate=[1]), "'rate' must be an object"),
    "weights kind": (lambda c: c.update(weights="half"), "'weights' must be"),
    "arch_kwargs list": (lambda c: c["base"].update(arch_kwargs=[8, 12]), "arch_kwargs must be an object"),
    "arch_kwargs negative": (lambda c: c["base"].update(arch_kwargs={"N": -8, "M": 12}), r"\.N must be an integer"),
    "arch_kwargs text": (lambda c: c["base"].update(arch_kwargs={"N": "8", "M": 12}), r"\.N must be an integer"),
    "arch_kwargs bool": (lambda c: c["base"].update(arch_kwargs={"N": True, "M": 12}), r"\.N must be an integer"),
    "arch_kwargs huge": (lambda c: c["base"].update(arch_kwargs={"N": 100_000, "M": 12}), r"1\.\.1024"),
    "quality text": (lambda c: c["base"].update(quality="x"), "base.quality must be"),
    "metric": (lambda c: c["base"].update(metric=3), "base.metric must be"),
    "sha256 not hex": (lambda c: c["base"].update(weights_sha256="zz"), "weights_sha256 must be 64 hex"),
    "bm hidden huge": (_bm(hidden=10**7), "'hidden' must be 1..4096"),
    "bm hidden text": (_bm(hidden="50"), "'hidden' must be int"),
    "bm lambdas text": (_bm(lambdas=["x"]), "'lambdas' must be list"),
    "bm lambdas NaN-free but negative": (_bm(lambdas=[-1.0, 0.5]), "is not a lambda"),
    "bm setting unknown": (_bm(nosuch=1), "unknown config keys"),
    "bm setting huge list": (_bm(encoder=["g_a"] * 5000), "at most 1024"),
    "bm encoder empty": (_bm(encoder=""), "cannot be set up with these settings"),  # found by the fuzz benchmark
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_config_is_a_clear_model_error(saved, tmp_path, case):
    change, message = MALFORMED[case]
    folder = variant(saved, tmp_path, change)
    with pytest.raises(VrtkError, match=message):
        load_model(folder)


RAW = {
    "not UTF-8": (b'{"format": "vrtk-model\xff\xfe"}', "not UTF-8"),
    "nested 100000 deep": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "nested 100 deep": (b'{"format": "vrtk-model", "x": ' + b"[" * 100 + b"]" * 100 + b"}", "more than 64 deep"),
    "a list": (b"[1, 2]", "a JSON list"),
    "a string": (b'"config"', "a JSON str"),
    "empty": (b"", "not valid JSON"),
    "truncated": (b'{"format": "vrtk-mo', "not valid JSON"),
    "5000-digit integer": (b'{"format_version": ' + b"9" * 5000 + b"}", "not valid JSON"),
}


@pytest.mark.parametrize("case", list(RAW), ids=list(RAW))
def test_unparseable_config_is_a_clear_model_error(saved, tmp_path, case):
    raw, message = RAW[case]
    with pytest.raises(ModelError, match=message):
        load_model(variant(saved, tmp_path, raw=raw))


def test_nan_lambdas_are_refused_not_accepted_for_any_rate(saved, tmp_path):
    config = {**saved[1], "rate": {"lambdas": ["<nan>"], "metric": "mse"}}
    text = json.dumps(config).replace('"<nan>"', "NaN, NaN")  # JSON that Python's json module reads as NaN
    with pytest.raises(ModelError, match="NaN is not a lambda"):
        load_model(variant(saved, tmp_path, raw=text.encode()))


def test_the_cli_prints_the_error_not_a_traceback(saved, tmp_path):
    folder = variant(saved, tmp_path, raw=b"[" * 100_000)
    code, _, stderr = run_cli("decompress", str(tmp_path / "x.vrtk"), "-o", str(tmp_path / "x.png"),
                              "--model", str(folder))
    assert code == 2 and stderr.startswith("vrtk: error:") and "config.json" in stderr


# -- sizes and tensors: refused before anything large is built --------------------------------------------------
def _weight(state):
    return next(k for k in state if k.endswith("g_a.0.0.weight") or k == "g_a.0.weight")


TENSORS = {
    "wrong shape": (lambda s: s.update({_weight(s): torch.zeros(8, 3, 3, 3)}), "shapes do not fit"),
    "NaN weights": (lambda s: s[_weight(s)].fill_(float("nan")), "NaN or infinite"),
    "NaN quantiles": (lambda s: s["entropy_bottleneck.quantiles"].fill_(float("nan")), "NaN or infinite"),
    "huge quantiles": (lambda s: s["entropy_bottleneck.quantiles"].mul_(1e7), "beyond"),
    "unordered quantiles": (lambda s: s["entropy_bottleneck.quantiles"].mul_(-1), "not ordered"),
    "extra tensor": (lambda s: s.update(extra=torch.zeros(2)), "unexpected"),
}


@pytest.mark.parametrize("case", list(TENSORS), ids=list(TENSORS))
def test_hostile_tensors_are_refused_quickly(saved, tmp_path, case):
    change, message = TENSORS[case]
    folder = variant(saved, tmp_path, tensors=change)
    start = time.perf_counter()
    with pytest.raises(ModelError, match=message):
        load_model(folder)
    assert time.perf_counter() - start < 10  # huge quantiles took 21 s (and 4.9 GB) in update()


@needs_proc
def test_sizes_over_the_limit_are_refused_without_building(saved, tmp_path):
    folder = variant(saved, tmp_path, lambda c: c["base"].update(arch_kwargs={"N": 100_000, "M": 100_000}))

    def load():
        with pytest.raises(ModelError, match=r"1\.\.1024"):
            load_model(folder)

    assert peak_memory_of(load) < 50_000_000  # torch.nn:Linear(100000, 100000) asked for 40 GB


def test_sizes_within_the_limits_must_still_fit_the_memory_budget(saved, tmp_path, monkeypatch):
    """N=M=1024 passes the width limit; its ~330M parameters are counted on a scaled-down copy before building."""
    from vrtk.errors import ResourceError

    monkeypatch.setenv("VRTK_MEMORY_BUDGET", "1G")
    folder = variant(saved, tmp_path, lambda c: c["base"].update(arch_kwargs={"N": 1024, "M": 1024}))

    def load():
        with pytest.raises(ResourceError, match=r"building bmshj2018-hyperprior .* needs about 2\.\d GiB"):
            load_model(folder)

    assert peak_memory_of(load) < 100_000_000  # building it takes 2.2 GB


def test_a_pickle_checkpoint_named_by_a_folder_is_refused_without_unsafe_advice(saved, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"g_a.0.weight": torch.zeros(1), "x": Payload()}, evil)
    folder = variant(saved, tmp_path, lambda c: (c["base"].update(weights=str(evil)), c.update(weights="delta")))
    with pytest.raises(ModelError, match="only plain tensors") as info:
        load_model(folder)
    assert "weights_only" not in str(info.value) and "will likely succeed" not in str(info.value)
    assert "holds other Python objects" in str(info.value)
    assert not marker.exists()


def test_a_weights_file_over_the_memory_budget_is_not_read(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("VRTK_MEMORY_BUDGET", "1K")
    with pytest.raises(ModelError, match="more than the memory budget"):
        load_model(variant(saved, tmp_path))


def test_the_untouched_folder_still_loads(saved, tmp_path):
    """The checks refuse nothing a real folder holds."""
    wrapped = load_model(variant(saved, tmp_path))
    assert [p.name for p in wrapped.plugins] == ["bm"] and len(wrapped.lambdas) == 8
