"""An untrained rate modulator is a silent no-op (every lambda, the same file): vrtk says so when wrapping and coding,
and stays quiet for trained, fixed-rate and unknown rate modules."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_KWARGS, run_cli
from PIL import Image
from test_codec_roundtrip import make_rate_dependent
from test_eval_probe import make_variable_model

from vrtk.container import parse
from vrtk.injection import adapters
from vrtk.modulation import ChannelModulator, RateModule, probe_lambdas, untrained_rate_warning
from vrtk.zoo import BaseSpec

WRAP_ARGS = ("bmshj2018-hyperprior", "--weights", "random", "--arch-kwargs", json.dumps(TINY_KWARGS))


def tiny(plugins: list[str]):
    from vrtk.model import wrap

    torch.manual_seed(0)
    return wrap(BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS)), plugins)


def modulators(wrapped) -> list[ChannelModulator]:
    return [m for _, m in adapters(wrapped.net, ChannelModulator)]


@pytest.mark.parametrize("plugin", ["bm", "gain"])
def test_a_fresh_modulator_is_the_identity_and_is_reported(plugin):
    wrapped = tiny(["ecg", plugin])
    mods = modulators(wrapped)
    assert mods and all(m.is_identity() and not m.varies_with_rate() for m in mods)
    message = untrained_rate_warning(wrapped.net)
    lo, hi = min(wrapped.lambdas), max(wrapped.lambdas)
    assert message.startswith(f"{plugin} is not trained")
    assert "the identity" in message and f"[{lo:g}, {hi:g}]" in message and "same bitstream" in message


def test_a_trained_modulator_is_not_reported():
    wrapped = tiny(["bm"])
    with torch.no_grad():
        make_rate_dependent(wrapped.net)
    assert all(m.varies_with_rate() and not m.is_identity() for m in modulators(wrapped))
    assert untrained_rate_warning(wrapped.net) is None


def test_a_constant_scale_is_static_too():
    """Gains trained to one vector for every lambda are not the identity, but still ignore the rate."""
    wrapped = tiny(["gain"])
    with torch.no_grad():
        for mod in modulators(wrapped):
            mod.gains.mul_(torch.linspace(0.5, 2.0, mod.channels))  # the same vector at every trained lambda
    assert not any(m.is_identity() or m.varies_with_rate() for m in modulators(wrapped))
    assert "are the same at every lambda" in untrained_rate_warning(wrapped.net)
    with torch.no_grad():
        modulators(wrapped)[0].gains[0, 0] += 1e-3  # one entry of one lambda moves: the rate now matters
    assert untrained_rate_warning(wrapped.net) is None


def test_probing_leaves_the_rate_as_it_was():
    mod = modulators(tiny(["bm"]))[0]
    assert mod.lmbda is None
    mod.scales_over_range()
    assert mod.lmbda is None
    mod.set_rate(mod.lambdas[1])
    assert mod.scales_over_range().shape == (2 * len(mod.lambdas) - 1, mod.channels)
    assert mod.lmbda == mod.lambdas[1]
    assert probe_lambdas([0.01, 0.04]) == pytest.approx([0.01, 0.02, 0.04])


def test_nothing_to_say_without_rate_modulators(tmp_path):
    assert untrained_rate_warning(tiny([]).net) is None  # fixed-rate
    assert untrained_rate_warning(tiny(["ecg"]).net) is None
    assert untrained_rate_warning(make_variable_model(tmp_path / "probe").net) is None  # rate outside RateModule


def test_an_unknown_kind_of_rate_module_is_not_judged():
    """A third party's RateModule whose effect cannot be probed without an input: no claim either way."""

    class Mystery(RateModule):
        plugin_name = "mystery"

        def forward(self, x):
            return x

    wrapped = tiny(["bm"])
    wrapped.net.extra = Mystery([0.001, 0.01])
    assert untrained_rate_warning(wrapped.net) is None


def test_wrap_and_compress_warn_about_an_untrained_modulator(tmp_path, tiny_images):
    folder = tmp_path / "w"
    code, out, err = run_cli("wrap", *WRAP_ARGS, "--plugins", "ecg,bm", "-o", str(folder))
    assert code == 0, err
    assert "vrtk: warning: bm is not trained" in err and "warning" not in out
    image = tmp_path / "im.png"
    Image.fromarray(tiny_images[0].mul(255).round().byte().permute(1, 2, 0).numpy()).save(image)
    files = []
    for lmbda in ("0.0018", "0.18"):
        target = tmp_path / f"{lmbda}.vrtk"
        code, out, err = run_cli("compress", str(image), "-o", str(target), "--model", str(folder),
                                 "--lambda", lmbda, "--json")
        assert code == 0, err
        assert "vrtk: warning: bm is not trained" in err
        json.loads(out)  # the warning went to stderr
        files.append(parse(target.read_bytes()))
    assert files[0].lmbda != files[1].lmbda
    assert files[0].strings == files[1].strings  # the same payload at both ends of the range: the warning's point
    code, _, err = run_cli("eval", str(folder), "--data", str(tmp_path), "--n-points", "2", "--no-macs",
                           "--metrics", "psnr", "--repeats", "1", "--no-progress")
    assert code == 0, err
    assert "vrtk: warning: bm is not trained" in err


def test_wrap_without_a_rate_plugin_does_not_warn(tmp_path):
    code, _, err = run_cli("wrap", *WRAP_ARGS, "--plugins", "ecg", "-o", str(tmp_path / "e"))
    assert code == 0, err
    assert "warning" not in err
