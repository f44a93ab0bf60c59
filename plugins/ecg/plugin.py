"""vrtk plugin ``ecg``: energy-based channel gating in front of the convolutions of g_a, g_s, h_a and h_s.

Placement (default): every Conv2d/ConvTranspose2d inside g_a, g_s, h_a, h_s except each transform's *first layer*,
i.e. the convolutions that read the transform's input itself. They are found by running the transform once on a
small random input and recording which convolutions receive that very tensor, so

* bmshj2018-hyperprior / mbt2018-mean / mbt2018: 10 of 14 convolutions (g_a.0, g_s.0, h_a.0, h_s.0 stay dense);
* cheng2020-anchor / -attn: every conv, including the residual blocks' 1x1 skips, the sub-pixel convs and the
  attention blocks' convs, except those that read the transform's input: g_a.0.conv1 and g_a.0.skip (both see the
  image), g_s.0.conv1 (anchor) or the two branch heads g_s.0.conv_a.0.conv.0 / g_s.0.conv_b.0.conv.0 (attn),
  h_a.0 and h_s.0;
* a transform another plugin wrapped first (bm: ``g_a -> Sequential(g_a, Modulate)``) is traced at the innermost
  module holding all its convolutions, so the order of ``--plugins ecg,bm`` and ``bm,ecg`` does not matter.

mbt2018's masked ``context_prediction`` is outside these transforms and is never gated (its weight is used through
F.conv2d during decoding), not even when a ``targets`` regex matches it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from vrtk_plugins.ecg.config import EcgConfig, upgrade_saved
from vrtk_plugins.ecg.layer import EcgConv

from vrtk.errors import PluginError
from vrtk.hookspecs import hookimpl
from vrtk.injection import Injector, Site, get_submodule, match_modules, replace_submodule

TRANSFORMS = ("g_a", "g_s", "h_a", "h_s")
CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)
TRACE_SIZE = 8  # spatial size of the placement trace: every CompressAI transform runs on 8x8


def _gateable(module: nn.Module) -> bool:
    from compressai.layers import MaskedConv2d

    return isinstance(module, CONV_TYPES) and not isinstance(module, MaskedConv2d)


def _convs(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Gateable convolutions in definition order (not those already wrapped as some adapter's base_layer)."""
    return [(n, m) for n, m in module.named_modules()
            if n and _gateable(m) and not (n.endswith("base_layer") or ".base_layer." in n)]


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    prefix = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        prefix.append(level[0])
    if len(prefix) == min(len(p) for p in parts):  # one conv only: its parent holds it
        prefix = prefix[:-1]
    return ".".join(prefix)


def first_layer(transform: nn.Module) -> list[str]:
    """Names (relative to ``transform``) of the convolutions that read the transform's input."""
    convs = _convs(transform)
    if not convs:
        return []
    root_name = _common_prefix([n for n, _ in convs])
    root = transform.get_submodule(root_name) if root_name else transform
    prefix = f"{root_name}." if root_name else ""
    try:
        return [prefix + n for n in _trace_first(root, convs[0][1].in_channels)]
    except Exception:  # a transform that cannot run on its own (e.g. needs a rate): first conv in definition order
        return [convs[0][0]]


@torch.no_grad()
def _trace_first(root: nn.Module, channels: int) -> list[str]:
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, inp, out, _n=n: calls.append((_n, inp[0])))
               for n, m in _convs(root)]
    was_training = root.training
    param = next(root.parameters())
    try:
        root.eval()
        root(torch.randn(1, channels, TRACE_SIZE, TRACE_SIZE, dtype=param.dtype, device=param.device))
    finally:
        root.train(was_training)
        for h in handles:
            h.remove()
    if not calls:
        raise RuntimeError("no convolution ran")
    first_input = calls[0][1]
    return list(dict.fromkeys(n for n, inp in calls if inp is first_input))


def default_targets(model: nn.Module) -> list[str]:
    """The paper's placement: all convolutions of the four transforms except each transform's first layer."""
    out = []
    for name in TRANSFORMS:
        transform = getattr(model, name, None)
        if not isinstance(transform, nn.Module):
            continue
        skip = set(first_layer(transform))
        out += [f"{name}.{n}" for n, _ in _convs(transform) if n not in skip]
    return out


def _matches(name: str, patterns: list[str]) -> bool:
    import re

    for p in patterns:
        if name == p:
            return True
        try:
            if re.fullmatch(p, name):
                return True
        except re.error:
            continue
    return False


class EcgInjector(Injector):
    name = "ecg"
    description = "energy-based channel gating before convolutions (Yin et al.): fewer effective MACs"
    config_class = EcgConfig

    def make_config(self, values: dict | None = None) -> EcgConfig:
        return super().make_config(upgrade_saved(dict(values or {})))

    def plan(self, model: nn.Module, config: EcgConfig) -> list[str]:
        if config.targets:
            paths = match_modules(model, config.targets, CONV_TYPES, config.exclude)
            paths = [p for p in paths if _gateable(get_submodule(model, p))]
        else:
            paths = [p for p in default_targets(model) if not _matches(p, list(config.exclude))]
        if not paths:
            raise PluginError("ecg: no convolution to gate (targets "
                              f"{config.targets or 'default: g_a, g_s, h_a, h_s minus first layers'}, "
                              f"exclude {config.exclude})")
        return paths

    def inject(self, model: nn.Module, config: EcgConfig) -> list[Site]:
        sites = []
        for path in self.plan(model, config):
            conv = get_submodule(model, path)
            gated = EcgConv(conv, config)
            param = next(conv.parameters())
            gated.gate.to(device=param.device, dtype=param.dtype)
            replace_submodule(model, path, gated)
            kind = "gate-convT2d" if isinstance(conv, nn.ConvTranspose2d) else "gate-conv2d"
            sites.append(Site(path, self.name, kind, gated.added_param_count()))
        return sites


def ecg_modules(model) -> list[tuple[str, EcgConv]]:
    """This plugin's modules in ``model`` (an nn.Module or a WrappedModel)."""
    net = model if isinstance(model, nn.Module) else getattr(model, "net", None)
    if not isinstance(net, nn.Module):
        return []
    return [(n, m) for n, m in net.named_modules() if isinstance(m, EcgConv)]


@hookimpl
def vrtk_register_injectors(register):
    from vrtk_plugins.ecg.slim import SlimEcgInjector  # a slim model's gates (vrtk export --slim)

    register(EcgInjector())
    register(SlimEcgInjector())


@hookimpl
def vrtk_slim(model, images, settings):
    """``vrtk export --slim``: remove the channels the gates (nearly) always close (plugins/ecg/slim_export.py)."""
    from vrtk_plugins.ecg.slim_export import slim

    return slim(model, images, settings)


def alpha_term(gate, layer: str = "") -> torch.Tensor:
    """gamma * mean_i (alpha_i - alpha_t)^2 over one layer's channels (paper), or the sum with ``alpha_reduction``;
    ``layer`` picks its ``layer_alpha_t`` entry."""
    cfg = gate.config
    if cfg.freeze_gates:  # a held gate: no pull on alpha
        return gate.alpha.new_zeros(())
    squares = (gate.alpha - cfg.alpha_t_for(layer)).square()
    return cfg.gamma * (squares.sum() if cfg.alpha_reduction == "sum" else squares.mean())


@hookimpl
def vrtk_loss_terms(model, step):
    """``alpha``: the alpha term summed over gated layers (paper); ``sparsity``: the hinge on the measured
    sparsity (only with a ``sparsity_target`` or ``layer_targets``, not in the paper)."""
    modules = ecg_modules(model)
    if not modules:
        return None
    terms = {"alpha": sum(alpha_term(m.gate, name) for name, m in modules)}
    penalties = []
    for name, m in modules:
        cfg, measured = m.gate.config, m.gate.last_sparsity_for_loss
        m.gate.last_sparsity_for_loss = None  # used once: do not keep the graph of an old step alive
        if cfg.final_target(name) > 0 and measured is not None:
            penalties.append(cfg.sparsity_weight * torch.relu(cfg.target_at(int(step), name) - measured).square())
    if penalties:
        terms["sparsity"] = sum(penalties)
    return terms


@hookimpl
def vrtk_layer_stats(model):
    """``ecg/<module path>/sparsity``: fraction of zeros each gated convolution received in the last forward."""
    stats = {f"ecg/{name}/sparsity": m.gate.last_sparsity for name, m in ecg_modules(model)
             if m.gate.last_sparsity is not None}
    return stats or None


def _as_bool(value) -> bool:
    if isinstance(value, str):
        if value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if value.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise PluginError(f"ecg.sparse expects true/false, not {value!r}")
    return bool(value)


@hookimpl
def vrtk_inference_modes(model, mode):
    """``ecg.scale`` (threshold multiplier, e.g. 0.5..2: the compute knob; travels with the bitstream),
    ``ecg.sparse`` (the tiled sparse path: same result, less CPU work), ``ecg.tile`` (its tile size)."""
    modules = ecg_modules(model)
    if not modules:
        return None
    used = []
    if "ecg.scale" in mode:
        scale = float(mode["ecg.scale"])
        if not (math.isfinite(scale) and scale > 0):
            raise PluginError(f"ecg.scale must be a positive number, not {mode['ecg.scale']!r}")
        for _, m in modules:
            m.gate.scale = scale
        used.append("ecg.scale")
    if "ecg.sparse" in mode:
        sparse = _as_bool(mode["ecg.sparse"])
        for _, m in modules:
            m.sparse = sparse
        used.append("ecg.sparse")
    if "ecg.tile" in mode:
        tile = int(mode["ecg.tile"])
        if tile < 1:
            raise PluginError(f"ecg.tile must be a positive tile size, not {mode['ecg.tile']!r}")
        for _, m in modules:
            m.tile = tile
        used.append("ecg.tile")
    return used


@torch.no_grad()
def calibrate(model, x: torch.Tensor, sparsity: float, scope: str = "channel") -> dict[str, float]:
    """Set every gate's alpha from one eval-mode forward on ``x`` (padded images) so that ``sparsity`` of each
    gate's inputs are zeroed; layers are set in execution order, each seeing the already-gated earlier ones.
    Returns the resulting per-layer sparsity. (Training does the same lazily when ``init_sparsity`` is set.)"""
    net = model if isinstance(model, nn.Module) else model.net
    modules = ecg_modules(net)
    if not modules:
        raise PluginError("ecg.calibrate: the model has no ECG gates")
    handles = [m.register_forward_pre_hook(lambda mod, inp: mod.gate.init_alpha(inp[0], sparsity, scope))
               for _, m in modules]
    was_training = net.training
    try:
        net.eval()
        net(x)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return {name: m.gate.last_sparsity for name, m in modules}


def unwrap(model) -> nn.Module:
    """Put every gated convolution's ``base_layer`` back in place (in place; returns the network)."""
    net = model if isinstance(model, nn.Module) else model.net
    for name, m in ecg_modules(net):
        replace_submodule(net, name, m.base_layer)
    return net
