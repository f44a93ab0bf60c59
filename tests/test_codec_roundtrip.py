"""Round trips through real .vrtk files at continuous rates, for every rate plugin (and ECG combined with them).

The tiny models here are untrained, so their modulators are set by hand to depend on lambda (as training would
make them): a file coded at one rate must decode to exactly what ``forward`` reconstructs at that rate, and to
something else at another rate. ``tiny_variable_rate_model`` is shared with the other codec test files.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_KWARGS

from vrtk.api import Coder, read_file
from vrtk.codec import pad, unpad
from vrtk.container import parse
from vrtk.fileio import write_bytes_atomic
from vrtk.injection import adapters
from vrtk.model import load_model, save_model, wrap
from vrtk.modulation import ChannelModulator, normalised_log_lambda
from vrtk.plugin_manager import Registry
from vrtk.rate import quality_to_lambda, use_rate
from vrtk.zoo import BaseSpec

INSTALLED = Registry(autoload=True).injectors
COMBOS = [["bm"], ["gain"]] + ([["ecg", "bm"], ["gain", "ecg"]] if "ecg" in INSTALLED else [])
# trained lambdas, lambdas strictly between them, and the ends of the range
RATES = [0.0018, 0.0025, 0.0099, 0.0483, 0.071, 0.18]


@torch.no_grad()
def make_rate_dependent(net: torch.nn.Module, strength: float = 1.5, offset: float = 2.0) -> None:
    """Give every modulator a scale that grows with lambda, exp(strength * t + offset) with t in [-1, 1], plus a
    little per-channel variation; demodulators get the inverse. (The untrained tiny base makes small latents:
    the offset lifts them to where quantisation costs bits.) Handles bm's MLP and gain vectors."""
    gen = torch.Generator().manual_seed(1)
    for _, mod in adapters(net, ChannelModulator):
        sign = 1.0 if mod.role == "modulate" else -1.0
        jitter = 0.1 * torch.randn(mod.channels, generator=gen)
        if hasattr(mod, "gains"):
            t = torch.tensor([normalised_log_lambda(lm, mod.lambdas) for lm in mod.lambdas])
            mod.gains.copy_(torch.exp(sign * (strength * t[:, None] + offset + jitter[None, :])))
        else:  # bm: relu(t + 1) in [0, 2] -> exp(strength * (t + 1) - strength + offset)
            mod.hidden.weight.fill_(1.0)
            mod.hidden.bias.fill_(1.0)
            mod.out.weight.fill_(sign * strength / mod.out.in_features)
            mod.out.bias.copy_(sign * (jitter - strength + offset))


def tiny_variable_rate_model(folder, plugins: list[str], seed: int = 0, configs: dict | None = None):
    """A tiny bmshj2018-hyperprior wrapped with ``plugins`` (and their ``configs``), modulators made
    rate-dependent, saved and loaded back (as a user gets it)."""
    torch.manual_seed(seed)
    spec = BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS))
    wrapped = wrap(spec, plugins, configs)
    make_rate_dependent(wrapped.net)
    wrapped.net.update(force=True)
    return load_model(save_model(wrapped, folder))


@torch.no_grad()
def forward_reconstruction(net, image: torch.Tensor, lmbda: float) -> torch.Tensor:
    x, unpadding = pad(image[None])
    with use_rate(net, lmbda):
        return unpad(net(x)["x_hat"], unpadding).clamp(0, 1)[0]


@pytest.mark.parametrize("plugins", COMBOS, ids=",".join)
def test_round_trip_through_files_at_continuous_rates(plugins, tmp_path, tiny_images):
    wrapped = tiny_variable_rate_model(tmp_path / "model", plugins)
    image = tiny_images[0]  # 70 x 90: padded to 128 x 128 and cropped back
    encoder = Coder(wrapped)
    decoder = Coder(load_model(tmp_path / "model"))  # a second copy, as on another machine
    sizes = {}
    for lmbda in RATES:
        path = tmp_path / f"img-{lmbda}.vrtk"
        write_bytes_atomic(path, encoder.compress(image, lmbda=lmbda).data)
        decoded = decoder.decode(read_file(path))
        assert decoded.header.lmbda == lmbda and decoded.mode == "RGB"
        assert decoded.tensor.shape == image.shape
        expected = forward_reconstruction(wrapped.net, image, lmbda)
        torch.testing.assert_close(decoded.tensor, expected, atol=1e-5, rtol=0)
        sizes[lmbda] = path.stat().st_size
    assert len(set(sizes.values())) >= 4, f"the rate hardly changes the file: {sizes}"
    assert sizes[0.18] > sizes[0.0018]
    # a file decodes to its own rate's reconstruction, not to another's
    other = forward_reconstruction(wrapped.net, image, 0.0018)
    assert (decoded.tensor - other).abs().max() > 1e-3


@pytest.mark.parametrize("plugins", COMBOS, ids=",".join)
def test_quality_names_the_same_rates(plugins, tmp_path, tiny_images):
    wrapped = tiny_variable_rate_model(tmp_path / "model", plugins)
    coder = Coder(wrapped)
    lams = sorted(wrapped.lambdas)
    for q in (1, 2.5, 4, 7.25, 8):
        result = coder.compress(tiny_images[1], quality=q)
        assert math.isclose(result.lmbda, quality_to_lambda(q, lams))
        assert result.data == coder.compress(tiny_images[1], lmbda=result.lmbda).data
    assert math.isclose(coder.compress(tiny_images[1], quality=2.5).lmbda, math.sqrt(lams[1] * lams[2]))


@pytest.mark.parametrize("plugins", COMBOS, ids=",".join)
def test_saved_and_loaded_model_codes_identically(plugins, tmp_path, tiny_images):
    wrapped = tiny_variable_rate_model(tmp_path / "a", plugins)
    again = load_model(save_model(wrapped, tmp_path / "b"))
    assert again.fingerprint() == wrapped.fingerprint()
    for lmbda in (0.003, 0.1):
        assert Coder(again).compress(tiny_images[2], lmbda=lmbda).data == \
            Coder(wrapped).compress(tiny_images[2], lmbda=lmbda).data


@pytest.mark.parametrize("plugins", COMBOS, ids=",".join)
def test_modulators_follow_the_rate_set_by_the_hook(plugins, tmp_path):
    wrapped = tiny_variable_rate_model(tmp_path / "m", plugins)
    mods = [m for _, m in adapters(wrapped.net, ChannelModulator)]
    assert mods
    with use_rate(wrapped.net, 0.02):
        assert all(m.lmbda == 0.02 for m in mods)
        low = [m.scale().clone() for m in mods]
    with use_rate(wrapped.net, 0.002):
        high = [m.scale() for m in mods]
    for m, a, b in zip(mods, low, high, strict=True):
        if m.role == "modulate":
            assert (a > b).all()  # a larger lambda scales the latent up: finer quantisation, more bits


def test_header_records_what_the_decoder_needs(tmp_path, tiny_images):
    wrapped = tiny_variable_rate_model(tmp_path / "m", ["bm"])
    data = Coder(wrapped).compress(tiny_images[0], lmbda=0.0099).data
    header = parse(data)
    assert header.fingerprint == wrapped.fingerprint()
    assert (header.width, header.height, header.mode, header.lmbda) == (90, 70, "RGB", 0.0099)
    assert header.shape == (2, 2)  # 70x90 padded to 128x128, z downsampled by 64
    assert len(header.strings) == 2 and header.options == {}



class Tilt(ChannelModulator):
    """A third-party modulator written only against vrtk.modulation: y * exp(t * p)."""

    plugin_name = "tilt"

    def __init__(self, channels, lambdas, role):
        super().__init__(channels, lambdas, role)
        self.p = torch.nn.Parameter(torch.linspace(1.0, 3.0, channels))

    def scale(self):
        t = normalised_log_lambda(self.require_rate(), self.lambdas)
        return torch.exp((t if self.role == "modulate" else -t) * self.p + (2.0 if self.role == "modulate" else -2.0))


def test_a_third_party_modulator_uses_the_same_machinery(tmp_path, tiny_images):
    from dataclasses import dataclass, field

    from vrtk.hookspecs import hookimpl
    from vrtk.modulation import LatentModulationInjector, Placement, set_rate_on
    from vrtk.plugin_manager import get_registry

    @dataclass
    class TiltConfig:
        lambdas: list = field(default_factory=lambda: [0.001, 0.1])

    class TiltInjector(LatentModulationInjector):
        name, config_class = "tilt", TiltConfig

        def placements(self, config):
            return [Placement("y", "g_a", "g_s")]

        def make_modulator(self, config, channels, latent, role):
            return Tilt(channels, config.lambdas, role)

    class TiltPlugin:
        @hookimpl
        def vrtk_register_injectors(self, register):
            register(TiltInjector())

        @hookimpl
        def vrtk_set_rate(self, model, lmbda):
            return set_rate_on(model, Tilt, lmbda)

    registry = get_registry()
    registry.add_plugin(TiltPlugin(), "tilt")
    assert not registry.load_errors
    torch.manual_seed(0)
    wrapped = wrap(BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS)), ["tilt"])
    assert wrapped.lambdas == [0.001, 0.1] and [s.path for s in wrapped.sites] == ["g_a.1", "g_s.0"]
    wrapped.net.update(force=True)
    loaded = load_model(save_model(wrapped, tmp_path / "tilt"))
    coder = Coder(loaded)
    sizes = []
    for lmbda in (0.001, 0.01, 0.1):
        data = coder.compress(tiny_images[0], lmbda=lmbda).data
        decoded = coder.decode(data).tensor
        torch.testing.assert_close(decoded, forward_reconstruction(loaded.net, tiny_images[0], lmbda),
                                   atol=1e-5, rtol=0)
        sizes.append(len(data))
    assert sizes[0] < sizes[1] < sizes[2]
