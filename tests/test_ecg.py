"""The ECG plugin: placement, the gate's formula, training terms, the compute knob, and the conformance checks run
with gates that really zero half their inputs (the shared conformance matrix runs the default, nearly open gates)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_KWARGS, run_cli
from torch import nn
from vrtk_plugins.ecg.config import EcgConfig
from vrtk_plugins.ecg.layer import EnergyGate, eca_kernel_size
from vrtk_plugins.ecg.plugin import calibrate, ecg_modules, unwrap

from vrtk.codec import pad
from vrtk.errors import PluginError
from vrtk.flops import measure_codec_macs
from vrtk.injection import adapters
from vrtk.model import load_model, plan, save_model, trainable_setup, wrap
from vrtk.options import apply_options
from vrtk.plugin_manager import get_registry
from vrtk.rate import use_rate
from vrtk.zoo import BaseSpec, build_base

PAPER_SITES = ["g_a.2", "g_a.4", "g_a.6", "g_s.2", "g_s.4", "g_s.6", "h_a.2", "h_a.4", "h_s.2", "h_s.4"]


def lively_base(arch: str = "bmshj2018-hyperprior") -> nn.Module:
    """A tiny random base whose latents do not all quantise to zero (untrained g_a/h_a output ~0.05), so the
    decoder side sees varied inputs too."""
    torch.manual_seed(0)
    kwargs = {"N": 8} if arch.startswith("cheng") else dict(TINY_KWARGS)
    net = build_base(BaseSpec(arch, weights="random", arch_kwargs=kwargs))
    with torch.no_grad():
        for transform in (net.g_a, net.h_a):
            last = [m for m in transform.modules() if isinstance(m, nn.Conv2d)][-1]
            last.weight.mul_(30)
            last.bias.mul_(30)
    return net


def save_base(tmp_path, arch: str = "bmshj2018-hyperprior"):
    path = tmp_path / "base.pt"
    torch.save(lively_base(arch).state_dict(), path)
    return path


def tiny(arch: str = "bmshj2018-hyperprior", plugins=("ecg",), configs=None, base_file=None):
    kwargs = {"N": 8} if arch.startswith("cheng") else dict(TINY_KWARGS)
    if base_file:
        return wrap(BaseSpec(arch, weights=str(base_file), arch_kwargs=kwargs), list(plugins), configs or {})
    return wrap(BaseSpec(arch, weights="random", arch_kwargs=kwargs), list(plugins), configs or {},
                net=lively_base(arch))


def images(count: int = 2, size: int = 64) -> torch.Tensor:
    from vrtk.data import synthetic_images

    return torch.stack([img.float() / 255 for img in synthetic_images(count, height=size, width=size, seed=3)])


# -- configuration and placement ---------------------------------------------------------------------------------
def test_eca_kernel_size_follows_eca():
    assert [eca_kernel_size(c) for c in (128, 192, 320)] == [5, 5, 5]
    assert eca_kernel_size(8) == 3 and eca_kernel_size(12) == 3 and eca_kernel_size(64) == 3
    for c in (3, 8, 100, 512):
        assert eca_kernel_size(c) % 2 == 1


def test_config_is_checked():
    with pytest.raises(PluginError):
        EcgConfig(estimator="magic")
    with pytest.raises(PluginError):
        EcgConfig(init_sparsity=1.5)
    with pytest.raises(PluginError):
        get_registry().injector("ecg").make_config({"alpha": 1.0})
    cfg = EcgConfig(init_sparsity=0.2, sparsity_target=0.6, sparsity_ramp=100)
    assert cfg.target_at(0) == pytest.approx(0.2)
    assert cfg.target_at(50) == pytest.approx(0.4)
    assert cfg.target_at(100) == cfg.target_at(10_000) == pytest.approx(0.6)


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_default_placement_is_the_papers_ten_of_fourteen(arch):
    wrapped = tiny(arch)
    assert sorted(n for n, _ in ecg_modules(wrapped.net)) == sorted(PAPER_SITES)
    convs = [m for m in wrapped.net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 14  # the gated ones are still there, as base_layer


def test_wrap_dry_run_lists_the_ten_gated_layers():
    code, out, err = run_cli("wrap", "bmshj2018-hyperprior", "--plugins", "ecg", "--weights", "random", "--dry-run")
    assert code == 0, err
    assert "ecg: 10 site(s)" in out
    listed = [line.strip() for line in out.splitlines()[1:] if line.strip()]
    assert listed == PAPER_SITES


def test_mbt2018_context_model_is_never_gated():
    torch.manual_seed(0)
    net = build_base(BaseSpec("mbt2018", weights="random", arch_kwargs=dict(TINY_KWARGS)))
    injector = get_registry().injector("ecg")
    assert sorted(injector.plan(net, EcgConfig())) == sorted(PAPER_SITES)
    everything = injector.plan(net, EcgConfig(targets=[".*"]))
    assert "context_prediction" not in everything and "g_a.0" in everything and "entropy_parameters.0" in everything


CHENG_DENSE = {
    "cheng2020-anchor": {"g_a.0.conv1", "g_a.0.skip", "g_s.0.conv1", "h_a.0", "h_s.0"},
    "cheng2020-attn": {"g_a.0.conv1", "g_a.0.skip", "g_s.0.conv_a.0.conv.0", "g_s.0.conv_b.0.conv.0", "h_a.0",
                       "h_s.0"},
}


@pytest.mark.parametrize("arch", sorted(CHENG_DENSE))
def test_cheng2020_gates_everything_but_what_reads_each_transforms_input(arch):
    """Residual blocks, 1x1 skips, sub-pixel and attention convs are gated; convs reading the input are not."""
    wrapped = tiny(arch)
    net = wrapped.net
    gated = {n for n, _ in ecg_modules(net)}
    transform_convs = {n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
                       and n.split(".")[0] in ("g_a", "g_s", "h_a", "h_s") and not n.endswith("base_layer")}
    assert transform_convs - gated == CHENG_DENSE[arch]
    assert not any("context_prediction" in n or "entropy_parameters" in n for n in gated)
    net.eval().update(force=True)
    with torch.no_grad():
        out = net(torch.rand(1, 3, 64, 64))
    assert out["x_hat"].shape == (1, 3, 64, 64)


def test_targets_and_exclude_override_the_default(tiny_spec):
    configs = {"ecg": {"exclude": [r"h_.*"]}}
    assert plan(tiny_spec, ["ecg"], configs)[0][1] == PAPER_SITES[:6]
    configs = {"ecg": {"targets": ["g_s.4", r"g_a\.[02]"]}}
    assert plan(tiny_spec, ["ecg"], configs)[0][1] == ["g_a.0", "g_a.2", "g_s.4"]
    with pytest.raises(PluginError):
        plan(tiny_spec, ["ecg"], {"ecg": {"targets": ["no_such_layer"]}})


@pytest.mark.parametrize("order", [("ecg", "bm"), ("bm", "ecg")])
def test_works_with_bm_in_either_order(order):
    """bm turns g_a into Sequential(g_a, modulator): ECG must still find the ten convs, and coding must match."""
    wrapped = tiny(plugins=order, configs={"ecg": {"alpha_init": 0.0}})
    net = wrapped.net.eval()
    gated = [n for n, _ in ecg_modules(net)]
    assert len(gated) == 10
    assert "g_a.0.2" in gated and "g_s.1.2" in gated
    # the recorded sites follow the modules, whichever plugin came first
    modules = dict(net.named_modules())
    assert sorted(s.path for s in wrapped.sites if s.plugin == "ecg") == sorted(gated)
    assert all(s.path in modules for s in wrapped.sites)
    x = pad(images(1))[0]
    lmbda = wrapped.middle_lambda()
    with use_rate(net, lmbda):
        calibrate(net, x, 0.5)
    net.update(force=True)
    with torch.no_grad(), use_rate(net, lmbda):
        expected = net(x)["x_hat"].clamp(0, 1)
        coded = net.compress(x)
        decoded = net.decompress(coded["strings"], coded["shape"])["x_hat"]
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=0)


# -- the gate ------------------------------------------------------------------------------------------------------
def reference_mask(gate: EnergyGate, x: torch.Tensor, relative: bool = False, tile: int = 0) -> torch.Tensor:
    """The published formula written out: omega = sigmoid(Conv1d_k(GAP(x^2))), th = omega * alpha."""
    x2 = x * x
    gap = x2.mean(dim=(2, 3))
    omega = torch.sigmoid(F.conv1d(gap[:, None], gate.eca_weight, padding=gate.kernel_size // 2)[:, 0])
    th = omega * gate.alpha * (gap if relative else 1.0) * gate.scale
    if tile == -1:  # whole channels
        return (gap > th)[..., None, None].expand_as(x)
    stat = x2 if not tile else F.avg_pool2d(x2, tile, ceil_mode=True)
    mask = stat > th[..., None, None]
    if tile:
        mask = mask.repeat_interleave(tile, 2).repeat_interleave(tile, 3)[..., :x.shape[2], :x.shape[3]]
    return mask


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("tile", [0, 4, -1])
def test_gate_applies_the_published_formula(relative, tile):
    torch.manual_seed(1)
    gate = EnergyGate(12, EcgConfig(energy_relative=relative, gate_tile=tile)).eval()
    x = torch.randn(2, 12, 9, 11)
    with torch.no_grad():
        gate.alpha.copy_((torch.rand(12) * 2 + 0.5) * (1.0 if relative else x.square().mean()))
        out = gate(x)
    mask = reference_mask(gate, x, relative, tile)
    torch.testing.assert_close(out, x * mask)
    assert gate.last_sparsity == pytest.approx(1 - mask.float().mean().item(), abs=1e-6)
    assert 0.05 < gate.last_sparsity < 0.95


def test_straight_through_forward_is_hard_and_gradient_is_the_sigmoids():
    torch.manual_seed(2)
    cfg = EcgConfig(eps=5.0, eps_relative=False)
    gate = EnergyGate(8, cfg).train()
    with torch.no_grad():
        gate.alpha.fill_(1.0)
    x = torch.randn(2, 8, 6, 6)
    out = gate(x)
    torch.testing.assert_close(out.detach(), x * reference_mask(gate, x))
    out.sum().backward()
    grad_ste = gate.alpha.grad.clone()
    # the same gradient through the soft mask x * sigmoid(eps * z)
    gate.alpha.grad = None
    x2 = x * x
    th = torch.sigmoid(F.conv1d(x2.mean((2, 3))[:, None], gate.eca_weight, padding=1)[:, 0]) * gate.alpha
    (x * torch.sigmoid(5.0 * (x2 - th[..., None, None]))).sum().backward()
    torch.testing.assert_close(grad_ste, gate.alpha.grad)
    soft = EnergyGate(8, EcgConfig(eps=5.0, eps_relative=False, estimator="soft")).train()
    soft.load_state_dict(gate.state_dict())
    torch.testing.assert_close(soft(x), x * torch.sigmoid(5.0 * (x2 - th[..., None, None])))


@pytest.mark.parametrize("scope", ["channel", "layer"])
def test_calibration_reaches_the_asked_sparsity(scope):
    torch.manual_seed(3)
    gate = EnergyGate(8, EcgConfig()).eval()
    x = torch.randn(4, 8, 16, 16) * torch.linspace(0.1, 3, 8)[None, :, None, None]
    gate.init_alpha(x, 0.4, scope)
    zeroed = (gate(x) == 0).float()
    assert zeroed.mean().item() == pytest.approx(0.4, abs=0.01)
    if scope == "channel":  # every channel loses the same share
        assert torch.allclose(zeroed.mean(dim=(0, 2, 3)), torch.full((8,), 0.4), atol=0.02)


# -- training terms and statistics ---------------------------------------------------------------------------------
def test_loss_terms_and_layer_stats():
    wrapped = tiny(configs={"ecg": {"init_sparsity": 0.3, "sparsity_target": 0.8, "gamma": 0.5}})
    net = wrapped.net.train()
    net(images())
    terms = dict(get_registry().call("vrtk_loss_terms", model=net, step=0))["ecg"]
    expected = sum(0.5 * (m.gate.alpha - 1e-4).square().mean() for _, m in ecg_modules(net))  # paper: a mean
    torch.testing.assert_close(terms["alpha"], expected)
    for _, m in ecg_modules(net):
        m.gate.config.alpha_reduction = "sum"  # the option (not in the paper): the sum over channels
    summed = dict(get_registry().call("vrtk_loss_terms", model=net, step=0))["ecg"]["alpha"]
    torch.testing.assert_close(summed, sum(0.5 * (m.gate.alpha - 1e-4).square().sum() for _, m in ecg_modules(net)))
    # measured sparsity ~0.3 after the lazy init, target 0.3 at step 0 -> small; at the ramp's end 0.8 -> large
    net(images())
    late = dict(get_registry().call("vrtk_loss_terms", model=net, step=10**6))["ecg"]
    assert late["sparsity"] > 0.1
    for _, m in ecg_modules(net):
        m.gate.alpha.grad = None
    late["sparsity"].backward()
    # g_s.6 runs last, so its alpha reaches the penalty only through its own gate: raising it must help
    grad = net.g_s.get_submodule("6").gate.alpha.grad
    assert (grad <= 0).all() and (grad < 0).any()
    assert torch.isfinite(torch.cat([m.gate.alpha.grad for _, m in ecg_modules(net)])).all()
    stats = dict(get_registry().call("vrtk_layer_stats", model=net))["ecg"]
    assert set(stats) == {f"ecg/{p}/sparsity" for p in PAPER_SITES}


def test_frozen_gates_hold_while_the_base_trains():
    """freeze_gates (recovery): the full loss, alpha term included, moves the base and leaves every gate as it was,
    while the gates keep zeroing the same share of their inputs."""
    from compressai.losses import RateDistortionLoss

    wrapped = tiny(configs={"ecg": {"freeze_gates": True}})
    trainable_setup(wrapped, "all")
    net = wrapped.net.train()
    calibrate(net, images(), 0.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        loss = RateDistortionLoss(lmbda=0.01)(net(images()), images())["loss"]
        terms = dict(get_registry().call("vrtk_loss_terms", model=net, step=step))["ecg"]
        assert float(terms["alpha"]) == 0.0
        opt.zero_grad()
        (loss + terms["alpha"]).backward()
        opt.step()
    changed = {k for k, v in net.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and not any(".gate." in k for k in changed)
    assert any(k.startswith("g_s.") and k.endswith("weight") for k in changed)


def test_layer_stats_are_the_zero_fraction_the_convolutions_receive():
    wrapped = tiny()
    net = wrapped.net.eval()
    calibrate(net, images(), 0.5)
    seen = {}
    hooks = [m.base_layer.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, (i[0] == 0).float()
                                                                                           .mean().item()))
             for n, m in ecg_modules(net)]
    with torch.no_grad():
        net(images())
    for h in hooks:
        h.remove()
    stats = dict(get_registry().call("vrtk_layer_stats", model=net))["ecg"]
    for name, zero_fraction in seen.items():
        assert stats[f"ecg/{name}/sparsity"] == pytest.approx(zero_fraction, abs=1e-6)
    assert 0.45 < stats["ecg/g_a.4/sparsity"] < 0.55 and 0.45 < stats["ecg/g_s.4/sparsity"] < 0.55


def test_lazy_init_runs_once_and_survives_save_and_load(tmp_path):
    wrapped = tiny(configs={"ecg": {"init_sparsity": 0.5, "alpha_init": 1e-4}}, base_file=save_base(tmp_path))
    net = wrapped.net.train()
    gate = net.g_s.get_submodule("4").gate
    assert not bool(gate.initialized) and torch.all(gate.alpha == 1e-4)
    net(images())
    assert bool(gate.initialized)
    assert gate.last_sparsity == pytest.approx(0.5, abs=0.1)
    alpha = gate.alpha.detach().clone()
    loaded = load_model(save_model(wrapped, tmp_path / "model"))
    again = loaded.net.g_s.get_submodule("4").gate
    torch.testing.assert_close(again.alpha.detach(), alpha)
    loaded.net.train()(images())  # no second initialisation
    torch.testing.assert_close(again.alpha.detach(), alpha)


# -- inference options -----------------------------------------------------------------------------------------------
def test_scale_knob_trades_compute_without_touching_the_weights():
    wrapped = tiny()
    net = wrapped.net.eval()
    calibrate(net, images(), 0.5)
    net.update(force=True)
    fingerprint = wrapped.fingerprint()
    keys = set(net.state_dict())
    x = images(1)
    sparsity = []
    for scale in (0.5, 1.0, 2.0):
        apply_options(net, {"ecg.scale": scale})
        with torch.no_grad():
            net(x)
        stats = dict(get_registry().call("vrtk_layer_stats", model=net))["ecg"]
        sparsity.append(sum(stats.values()) / len(stats))
    assert sparsity[0] < sparsity[1] < sparsity[2]
    assert wrapped.fingerprint() == fingerprint and set(net.state_dict()) == keys
    used = dict(get_registry().call("vrtk_inference_modes", model=net, mode={"ecg.sparse": "true", "x.y": 1}))
    assert used["ecg"] == ["ecg.sparse"] and all(m.sparse for _, m in ecg_modules(net))
    with pytest.raises(PluginError):
        apply_options(net, {"ecg.scale": -1})
    with pytest.raises(PluginError):
        apply_options(build_base(BaseSpec("bmshj2018-hyperprior", weights="random",
                                          arch_kwargs=dict(TINY_KWARGS))), {"ecg.scale": 0.5})


# -- conformance with real sparsity ------------------------------------------------------------------------------------
@pytest.mark.parametrize("tile", [0, 8, -1])
def test_conformance_with_half_the_inputs_zeroed(tile, tmp_path):
    """Frozen base: only gate tensors change; the delta round-trips exactly; real coding equals forward."""
    from compressai.losses import RateDistortionLoss

    # eps_relative (not the paper's sigmoid(eps * z)): without it two steps at lr 1e-2 reopen the 8x8-tile gates
    cfg = {"init_sparsity": 0.5, "sparsity_target": 0.6, "gate_tile": tile, "eps_relative": True}
    wrapped = tiny(configs={"ecg": cfg}, base_file=save_base(tmp_path))
    trainable_setup(wrapped, "plugins")
    net = wrapped.net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    loss_fn = RateDistortionLoss(lmbda=0.01)
    batch = images()
    for step in range(2):
        loss = loss_fn(net(batch), batch)["loss"]
        for _, terms in get_registry().call("vrtk_loss_terms", model=net, step=step):
            loss = loss + sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {k for k, v in net.state_dict().items() if not torch.equal(before[k], v)}
    own = {k for k in before if any(k.startswith(f"{n}.gate.") for n, _ in adapters(net))}
    assert changed and changed <= own
    net.eval().update(force=True)
    loaded = load_model(save_model(wrapped, tmp_path / "model"))
    assert loaded.fingerprint() == wrapped.fingerprint()
    x, _ = pad(images(1, 70))
    with torch.no_grad():
        expected = net(x)["x_hat"].clamp(0, 1)
        stats = dict(get_registry().call("vrtk_layer_stats", model=net))["ecg"]
        coded = loaded.net.compress(x)
        decoded = loaded.net.decompress(coded["strings"], coded["shape"])["x_hat"]
    # the gates really work, decoder side included (whole-channel gates on 8 channels: only on average)
    assert (sum(stats.values()) / len(stats) if tile == -1 else min(stats.values())) > 0.2
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=0)


# -- MACs and unwrapping ---------------------------------------------------------------------------------------------
def test_gate_overhead_and_effective_macs():
    wrapped = tiny()
    net = wrapped.net.eval()
    net.update(force=True)
    x = pad(images(1))[0]
    open_gates = measure_codec_macs(net, x)
    calibrate(net, x, 0.5)
    gated = measure_codec_macs(net, x)
    c, h, w = 8, 32, 32  # g_a.2's input: N channels at half resolution
    k = net.g_a.get_submodule("2").gate.kernel_size
    assert gated.encoder.per_layer["g_a.2"] == (3 * c * h * w + c * k + 3 * c,) * 2
    assert gated.encoder.dense == open_gates.encoder.dense
    for side in ("encoder", "decoder"):
        before, after = getattr(open_gates, side).per_layer, getattr(gated, side).per_layer
        convs = [k for k in after if k.endswith(".base_layer")]
        assert sum(after[k][1] for k in convs) < 0.65 * sum(before[k][1] for k in convs)
        assert getattr(gated, side).effective < getattr(open_gates, side).effective


def test_unwrap_gives_back_the_base_model():
    wrapped = tiny()
    base = lively_base()
    net = unwrap(copy.deepcopy(wrapped.net)).eval()
    assert not ecg_modules(net)
    assert net.state_dict().keys() == base.state_dict().keys()
    x = images(1)
    with torch.no_grad():
        torch.testing.assert_close(net(x)["x_hat"], base.eval()(x)["x_hat"])


def test_eval_and_report_give_the_gated_layer_reduction(tmp_path):
    """`vrtk eval` of a gated model stores per-layer MACs; `vrtk report` sums them over the ten gated layers."""
    from PIL import Image

    from vrtk.data import synthetic_images
    from vrtk.eval.report import build_report
    from vrtk.eval.results import load_results

    wrapped = tiny()
    calibrate(wrapped, images(), 0.5)
    wrapped.lambdas = [0.0035]
    wrapped.net.update(force=True)
    folder = save_model(wrapped, tmp_path / "ecg")
    data = tmp_path / "images"
    data.mkdir()
    Image.fromarray(synthetic_images(1, 64, 64, seed=5)[0].permute(1, 2, 0).numpy()).save(data / "a.png")
    out = tmp_path / "ecg.json"
    assert run_cli("eval", str(folder), "--data", str(data), "--no-progress", "-o", str(out))[0] == 0
    layers = load_results(out)["vrtk"]["layer_kmacs"][0]
    for path in PAPER_SITES:
        assert f"{path}.base_layer" in layers["decoder" if path[0:3] in ("g_s", "h_s") else "encoder"]
    row = build_report([str(out)], tmp_path / "report")["flops"][0]
    dense = sum(side[f"{p}.base_layer"][0] for side in layers.values() for p in PAPER_SITES
                if f"{p}.base_layer" in side)
    assert row["gated_kmacs_dense"] == pytest.approx(dense)
    assert row["gated_reduction"] > 1.3  # about half of each gated input is zero after calibration
    assert "gated layers" in (tmp_path / "report" / "report.md").read_text()


def test_layer_targets_give_some_layers_their_own_sparsity_target():
    """``layer_targets`` (not in the paper): the first regex that fully matches a gated layer sets its target; the
    hinge then pushes only the layers below their own target."""
    cfg = EcgConfig(sparsity_target=0.6, layer_targets={r"g_s\..*": 0.2, r"h_.*": 0.0}, init_sparsity=0.4,
                    sparsity_ramp=10)
    assert (cfg.final_target("g_a.2"), cfg.final_target("g_s.1.4"), cfg.final_target("h_a.2")) == (0.6, 0.2, 0.0)
    assert cfg.target_at(0, "g_s.4") == pytest.approx(0.2) and cfg.target_at(5, "g_a.2") == pytest.approx(0.5)
    with pytest.raises(PluginError, match="layer_targets"):
        EcgConfig(layer_targets={"g_s": 1.5})
    with pytest.raises(PluginError, match="regex"):
        EcgConfig(layer_targets={"g_s[": 0.3})
    wrapped = tiny(configs={"ecg": {"init_sparsity": 0.3, "sparsity_target": 0.0, "layer_targets": {r"g_a\..*": 0.9}}})
    net = wrapped.net.train()
    net(images())
    net(images())
    penalty = dict(get_registry().call("vrtk_loss_terms", model=net, step=10**6))["ecg"]["sparsity"]
    for _, m in ecg_modules(net):
        m.gate.alpha.grad = None
    penalty.backward()
    pushed = {name for name, m in ecg_modules(net)
              if m.gate.alpha.grad is not None and m.gate.alpha.grad.abs().sum() > 0}
    assert pushed and all(name.startswith("g_a.") for name in pushed)  # only g_a has a target


def test_layer_alpha_t_gives_some_layers_their_own_alpha_target():
    """``layer_alpha_t`` (not in the paper): the alpha term of a matching layer pulls alpha toward its own target;
    at alpha == that target the layer's term is zero while the others still pull."""
    cfg = EcgConfig(alpha_t=5e-3, layer_alpha_t={r"g_s\..*": 1e-3})
    assert (cfg.alpha_t_for("g_a.2"), cfg.alpha_t_for("g_s.4")) == (5e-3, 1e-3)
    with pytest.raises(PluginError, match="layer_alpha_t"):
        EcgConfig(layer_alpha_t={"g_s": -1.0})
    with pytest.raises(PluginError, match="regex"):
        EcgConfig(layer_alpha_t={"g_s[": 1e-3})
    net = tiny(configs={"ecg": {"alpha_init": 1e-3, "alpha_t": 5e-3, "gamma": 1.0,
                                "layer_alpha_t": {r"g_s\..*": 1e-3}}}).net.train()
    net(images())
    term = dict(get_registry().call("vrtk_loss_terms", model=net, step=0))["ecg"]["alpha"]
    term.backward()
    grads = {name: float(m.gate.alpha.grad.abs().sum()) for name, m in ecg_modules(net)}
    assert any(n.startswith("g_s.") for n in grads) and any(not n.startswith("g_s.") for n in grads)
    assert all((g == 0) == name.startswith("g_s.") for name, g in grads.items())
