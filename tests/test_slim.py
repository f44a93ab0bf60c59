"""``vrtk export --slim``: channels the ECG gates always close leave the model (vrtk/slim.py, plugins/ecg/slim*.py).

Tolerances: where every removed channel reaches the consumer as zero *and* adds nothing to a GDN normalisation
(its producer's output is zero), the slim model is the gated model: same bitstreams, decoded images equal to 1e-6
(float summation over fewer channels). A removed channel that is constant but non-zero before a GDN is compensated
exactly (beta absorbs gamma_ij * x_j^2: latent equal to 1e-5 relative). A removed channel that varies over the image
is compensated by its mean only: in the case below (removed channels carry up to ~35 % of a kept channel's mean
normalisation) the latent moves by at most 10 % (relative L2), less than without compensation.
"""

from __future__ import annotations

import pytest
import torch
from compressai.layers import GDN
from conftest import TINY_KWARGS, run_cli
from PIL import Image

from vrtk.codec import pad
from vrtk.errors import ModelError, PluginError
from vrtk.flops import dense_kmacs_per_pixel, measure_codec_macs
from vrtk.model import load_model, save_model, wrap
from vrtk.rate import use_rate
from vrtk.slim import find_links
from vrtk.slimming import slim_model
from vrtk.zoo import BaseSpec, build_base

# (producer to silence, its output channels): links ga1 (GDN), gs2 (IGDN), ha1 and hs1 (ReLU)
SILENCED = {"ga1": ("g_a.0", [1, 3]), "gs2": ("g_s.2", [2]), "ha1": ("h_a.0", [0, 5]), "hs1": ("h_s.0", [4])}


def gated(arch="bmshj2018-hyperprior", plugins=("ecg",), gate_tile=-1, seed=0):
    torch.manual_seed(seed)
    spec = BaseSpec(arch=arch, weights="random", arch_kwargs=dict(TINY_KWARGS))
    configs = {"ecg": {"gate_tile": gate_tile}}
    wrapped = wrap(spec, list(plugins), configs)
    wrapped.net.eval()
    return wrapped


def conv_at(net, link_name, role):
    from vrtk.slim import conv_of

    link = find_links(net)[link_name]
    return conv_of(net.get_submodule(getattr(link, role)))


@torch.no_grad()
def silence(wrapped, links=SILENCED):
    """Zero the producer's weights and bias of some channels: the gate after them sees zeros, always closes them."""
    for name, (_, channels) in links.items():
        conv = conv_at(wrapped.net, name, "producer")
        dim = 1 if isinstance(conv, torch.nn.ConvTranspose2d) else 0
        conv.weight.index_fill_(dim, torch.tensor(channels), 0.0)
        conv.bias[channels] = 0.0
    wrapped.net.update(force=True)


def calibration(images):
    return [pad(img[None])[0] for img in images]


def rate_of(wrapped):
    return wrapped.middle_lambda() if wrapped.variable_rate else None


@pytest.mark.parametrize("arch", ["bmshj2018-factorized", "bmshj2018-factorized-relu", "bmshj2018-hyperprior",
                                  "mbt2018-mean", "mbt2018"])
def test_slim_architecture_builds_any_widths(arch):
    base = build_base(BaseSpec(arch=arch, weights="random", arch_kwargs=dict(TINY_KWARGS))).state_dict()
    same = build_base(BaseSpec(arch=f"{arch}-slim", weights="random", arch_kwargs=dict(TINY_KWARGS))).state_dict()
    assert {k: v.shape for k, v in base.items()} == {k: v.shape for k, v in same.items()}
    net = build_base(BaseSpec(arch=f"{arch}-slim", weights="random", arch_kwargs={**TINY_KWARGS, "ga2": 3, "gs1": 5}))
    links = find_links(net)
    assert links["ga2"].width == 3 and links["gs1"].width == 5 and links["ga1"].width == TINY_KWARGS["N"]
    assert net.g_a[4].in_channels == 3 and net.g_a[2].out_channels == 3
    if isinstance(net.g_a[3], GDN):
        assert net.g_a[3].beta.shape == (3,) and net.g_a[3].gamma.shape == (3, 3)
    with pytest.raises(ModelError, match="no link ha9"):
        build_base(BaseSpec(arch=f"{arch}-slim", weights="random", arch_kwargs={**TINY_KWARGS, "ha9": 2}))
    with pytest.raises(ModelError, match="ga1 must be a width 1..8"):
        build_base(BaseSpec(arch=f"{arch}-slim", weights="random", arch_kwargs={**TINY_KWARGS, "ga1": 9}))


@pytest.mark.parametrize("arch,plugins,gate_tile", [
    ("bmshj2018-hyperprior", ("ecg",), -1),
    ("bmshj2018-hyperprior", ("ecg",), 0),  # element gates: a channel zero everywhere is closed everywhere
    ("mbt2018-mean", ("ecg",), -1),
    ("bmshj2018-hyperprior", ("ecg", "bm"), -1),
    ("bmshj2018-hyperprior", ("bm", "ecg"), -1),
])
def test_always_closed_channels_are_removed_and_nothing_changes(arch, plugins, gate_tile, tiny_images):
    wrapped = gated(arch, plugins, gate_tile)
    silence(wrapped)
    widths = {name: link.width for name, link in find_links(wrapped.net).items()}
    slim, report = slim_model(wrapped, calibration(tiny_images), {"min_closed": 1.0})
    rows = {r["link"]: r for r in report["links"]}
    for name, (_, channels) in SILENCED.items():
        assert rows[name]["kept"] <= widths[name] - len(channels)
        assert rows[name]["closed_removed_min"] == 1.0
    assert slim.base.arch == f"{arch}-slim"
    assert [p.name for p in slim.plugins] == [("ecg-slim" if p == "ecg" else p) for p in plugins]
    assert slim.lambdas == wrapped.lambdas
    lmbda = rate_of(wrapped)
    for img in tiny_images:
        x, _ = pad(img[None])
        with torch.no_grad(), use_rate(wrapped.net, lmbda), use_rate(slim.net, lmbda):
            a, b = wrapped.net(x), slim.net(x)
            coded_a, coded_b = wrapped.net.compress(x), slim.net.compress(x)
            decoded = slim.net.decompress(coded_b["strings"], coded_b["shape"])["x_hat"]
            expected = wrapped.net.decompress(coded_a["strings"], coded_a["shape"])["x_hat"]
        assert coded_a["strings"] == coded_b["strings"]  # the same bitstream, bit for bit
        torch.testing.assert_close(decoded, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(b["x_hat"], a["x_hat"], atol=1e-6, rtol=0)
        for key in a["likelihoods"]:
            torch.testing.assert_close(b["likelihoods"][key], a["likelihoods"][key], atol=1e-6, rtol=1e-5)


def _gdn_case(scale: float, constant: bool):
    """ga1's channels 1 and 3 closed by their gate (alpha huge) but non-zero before the GDN, whose gamma mixes
    channels; ``constant``: the producer writes only its bias there (the same value at every pixel)."""
    wrapped = gated(seed=3)
    net = wrapped.net
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, GDN):
                c = m.beta.shape[0]
                m.gamma.copy_(m.gamma_reparam.init(0.1 * torch.eye(c) + 0.1 * torch.rand(c, c)))
        producer = conv_at(net, "ga1", "producer")
        if constant:
            producer.weight[[1, 3]] = 0.0
            producer.bias[[1, 3]] = torch.tensor([0.8, -1.5])
        else:
            producer.weight[[1, 3]] *= scale
        net.get_submodule(find_links(net)["ga1"].consumer).gate.alpha[[1, 3]] = 1e6
    net.update(force=True)
    return wrapped


def _latent_error(wrapped, slim, images) -> float:
    with torch.no_grad():
        errors = [float((slim.net.g_a(x) - wrapped.net.g_a(x)).norm() / wrapped.net.g_a(x).norm())
                  for x in calibration(images)]
    return max(errors)


def test_gdn_compensation_is_exact_for_a_constant_channel(tiny_images):
    wrapped = _gdn_case(0.0, constant=True)
    comp, report = slim_model(wrapped, calibration(tiny_images), {"min_closed": 1.0})
    plain, _ = slim_model(wrapped, calibration(tiny_images), {"min_closed": 1.0, "compensate": False})
    share = next(r["norm_share"] for r in report["links"] if r["link"] == "ga1")
    assert share > 0.05  # the removed channels did weigh in the normalisation
    assert _latent_error(wrapped, comp, tiny_images) < 1e-5
    assert _latent_error(wrapped, plain, tiny_images) > 1e-3


def test_gdn_compensation_approximates_a_varying_channel(tiny_images):
    wrapped = _gdn_case(5.0, constant=False)
    comp, report = slim_model(wrapped, calibration(tiny_images), {"min_closed": 1.0})
    plain, _ = slim_model(wrapped, calibration(tiny_images), {"min_closed": 1.0, "compensate": False})
    assert next(r["norm_share"] for r in report["links"] if r["link"] == "ga1") > 0.1
    with_comp, without = _latent_error(wrapped, comp, tiny_images), _latent_error(wrapped, plain, tiny_images)
    assert with_comp <= 0.10 and with_comp < without


def test_slim_folder_loads_and_codes_a_vrtk_file(tiny_images, tmp_path):
    import vrtk

    wrapped = gated(plugins=("ecg", "bm"))
    silence(wrapped)
    slim, _ = slim_model(wrapped, calibration(tiny_images), {"min_closed": 1.0})
    folder = save_model(slim, tmp_path / "slim", full=True)
    loaded = load_model(folder)
    assert loaded.fingerprint() == slim.fingerprint() and loaded.base.arch == "bmshj2018-hyperprior-slim"
    lmbda = slim.middle_lambda()
    img = tiny_images[0]
    data = vrtk.compress(img, model=folder, lmbda=lmbda)
    decoded = vrtk.api.decompress_tensor(data, model=folder).tensor
    reference = vrtk.api.decompress_tensor(vrtk.compress(img, model=wrapped, lmbda=lmbda), model=wrapped).tensor
    assert decoded.shape == img.shape
    torch.testing.assert_close(decoded, reference, atol=1e-6, rtol=0)


def test_the_remaining_gates_still_decide_per_image(tiny_images):
    from vrtk_plugins.ecg.plugin import calibrate, ecg_modules
    from vrtk_plugins.ecg.slim import SlimEnergyGate

    wrapped = gated()
    silence(wrapped)
    x = torch.cat([pad(img[None])[0] for img in tiny_images])
    calibrate(wrapped.net, x, 0.3, scope="layer")  # real thresholds: some channels closed, others open, per image
    slim, _ = slim_model(wrapped, calibration(tiny_images), {"min_closed": 1.0})
    gates = {name: m.gate for name, m in ecg_modules(slim.net)}
    assert any(isinstance(g, SlimEnergyGate) for g in gates.values())
    masks = {name: [] for name in gates}
    for img in tiny_images:
        xp, _ = pad(img[None])
        with torch.no_grad():
            torch.testing.assert_close(slim.net(xp)["x_hat"], wrapped.net(xp)["x_hat"], atol=1e-6, rtol=0)
        for name, gate in gates.items():
            masks[name].append(gate.last_tile_mask.flatten())
    # some channel a gate of the slim model opens for one image and closes for another
    assert any(bool((torch.stack(m).any(0) & ~torch.stack(m).all(0)).any()) for m in masks.values())


def test_dense_macs_fall(tiny_images):
    wrapped = gated()
    silence(wrapped)
    slim, report = slim_model(wrapped, calibration(tiny_images), {"min_closed": 1.0})
    before, after = dense_kmacs_per_pixel(wrapped.net), dense_kmacs_per_pixel(slim.net)
    assert after["encoder"] < before["encoder"] and after["decoder"] < before["decoder"]
    x, _ = pad(tiny_images[0][None])
    gated_eff = measure_codec_macs(wrapped.net, x).kmacs_per_pixel()
    slim_eff = measure_codec_macs(slim.net, x).kmacs_per_pixel()
    assert slim_eff["decoder_effective"] < gated_eff["decoder_effective"]


def test_slimming_twice_composes(tiny_images):
    wrapped = gated()
    silence(wrapped, {"gs2": ("g_s.2", [2])})
    once, _ = slim_model(wrapped, calibration(tiny_images), {"min_closed": 1.0})
    silence(once, {"gs2": ("g_s.2", [4])})  # channel 4 of the 7 left, channel 5 of the original 8
    twice, _ = slim_model(once, calibration(tiny_images), {"min_closed": 1.0})
    config = next(p.config for p in twice.plugins if p.name == "ecg-slim")
    assert config["full_channels"]["gs2"] == 8
    assert 2 not in config["kept_channels"]["gs2"] and 5 not in config["kept_channels"]["gs2"]
    for img in tiny_images:
        x, _ = pad(img[None])
        with torch.no_grad():
            torch.testing.assert_close(twice.net(x)["x_hat"], once.net(x)["x_hat"], atol=1e-6, rtol=0)


def test_refusals(tiny_images):
    no_gates = wrap(BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS)), ["bm"])
    with pytest.raises(ModelError, match="no installed plugin can slim"):
        slim_model(no_gates, calibration(tiny_images), {})
    open_gates = wrap(BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS)), ["ecg"],
                      {"ecg": {"targets": ["g_a.2", "g_s.4"]}})  # after GDNs: no channel is ever zero
    with pytest.raises(PluginError, match="nothing to remove"):
        slim_model(open_gates, calibration(tiny_images), {"min_closed": 1.0})
    from vrtk_plugins.ecg.slim import SlimEcgConfig

    with pytest.raises(PluginError, match="increasing channel indices"):
        SlimEcgConfig(full_channels={"gs2": 8}, kept_channels={"gs2": [3, 1]})
    with pytest.raises(PluginError, match="name different links"):
        SlimEcgConfig(full_channels={"gs2": 8}, kept_channels={})


def test_export_command(tiny_images, tmp_path):
    wrapped = gated()
    silence(wrapped)
    source = save_model(wrapped, tmp_path / "gated", full=True)
    images = tmp_path / "calib"
    images.mkdir()
    for i, img in enumerate(tiny_images):
        Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(images / f"{i}.png")
    out = tmp_path / "slim"
    code, text, err = run_cli("export", str(source), "-o", str(out), "--slim", "--calibration", str(images),
                              "--min-closed", "1")
    assert code == 0, err
    assert "bmshj2018-hyperprior-slim" in text and "dense kMAC/px" in text and "reloads with the same" in text
    assert (out / "slim_report.json").is_file()
    assert load_model(out).base.arch == "bmshj2018-hyperprior-slim"
    code, _, err = run_cli("export", str(source), "-o", str(out), "--slim", "--calibration", str(images))
    assert code == 2 and "--force" in err
    code, _, err = run_cli("export", str(source), "-o", str(tmp_path / "other"), "--slim")
    assert code == 2 and "needs --calibration" in err


def test_slim_finetune_recipe_trains_an_exported_model(tiny_images, tmp_path):
    wrapped = gated()
    silence(wrapped)
    slim, _ = slim_model(wrapped, calibration(tiny_images), {"min_closed": 1.0})
    assert next(p.config for p in slim.plugins if p.name == "ecg-slim")["sparsity_target"] == 0.0
    folder = save_model(slim, tmp_path / "slim", full=True)
    code, out, err = run_cli("run", "slim-finetune", "profile=test", f"model={folder}", "steps=2",
                             f"out={tmp_path / 'run'}", "--no-progress")
    assert code == 0, err
    tuned = load_model(out.split("model saved: ", 1)[1].split()[0])
    assert tuned.base.arch_kwargs == slim.base.arch_kwargs and [p.name for p in tuned.plugins] == ["ecg-slim"]
    assert tuned.fingerprint() != slim.fingerprint()


def test_weights_must_agree_with_the_config_on_kept_channels(tiny_images, tmp_path):
    from safetensors.torch import load_file, save_file

    wrapped = gated()
    silence(wrapped)
    slim, _ = slim_model(wrapped, calibration(tiny_images), {"min_closed": 1.0})
    folder = save_model(slim, tmp_path / "slim", full=True)
    tensors = load_file(str(folder / "model.safetensors"))
    key = next(k for k in tensors if k.endswith("eca_slots"))
    tensors[key] = tensors[key].flip(0)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(PluginError, match="not the kept channels"):
        load_model(folder)


def test_a_slim_model_exports_to_onnx(tiny_images, tmp_path):
    pytest.importorskip("onnxruntime")
    wrapped = gated()
    silence(wrapped)
    slim, _ = slim_model(wrapped, calibration(tiny_images), {"min_closed": 1.0})
    folder = save_model(slim, tmp_path / "slim", full=True)
    code, out, err = run_cli("export", str(folder), "-o", str(tmp_path / "onnx"))
    assert code == 0, err
    assert "g_s.onnx" in out  # every graph was checked against torch before the folder was written


def test_an_architecture_that_is_not_a_chain_is_refused_before_calibration():
    cheng = wrap(BaseSpec(arch="cheng2020-anchor", weights="random", arch_kwargs={"N": 8}), ["ecg"])
    with pytest.raises(PluginError, match="plain chains"):
        slim_model(cheng, [], {})
