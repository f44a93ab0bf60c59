"""``vrtk export --slim`` for ECG: channels a gate (nearly) always closes leave the model.

1. :func:`measure` runs the gated model (hard gates, eval) over calibration images -- at every rate it is asked for
   -- and records, per link (vrtk/slim.py) whose consumer is gated: how often each channel reaches the convolution
   as zero (closed by the gate, or zero anyway, like a dead ReLU channel), each channel's mean energy GAP(x^2) at
   the gate (what ECA reads), and, when a GDN/IGDN sits on the link, the mean of its normalisation input x^2.
2. :func:`build` removes, per link, the channels closed on at least ``min_closed`` of the inputs (at least one
   channel stays), from the producer, the GDN (folding the removed channels' mean ``gamma_ij E[x_j^2]`` into
   ``beta_i`` when ``compensate``) and the consumer, puts a :class:`~vrtk_plugins.ecg.slim.SlimEnergyGate` in front
   of the consumer, and assembles a model of the registered slim architecture with plugin ``ecg-slim`` (same
   settings, except no sparsity target: a training-only term the removed channels used to satisfy).

A slim model can be slimmed again (after ``slim-finetune``): indices and ECA fills compose.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from vrtk_plugins.ecg.layer import EcgConv
from vrtk_plugins.ecg.slim import SlimEnergyGate, slim_gate

from vrtk.errors import PluginError
from vrtk.model import PluginUse
from vrtk.slim import Link, find_links, gdn_moment, is_gdn, narrow_link
from vrtk.slimming import assemble, slim_base_spec

GATED_PLUGINS = ("ecg", "ecg-slim")


@dataclass
class LinkUsage:
    """Calibration statistics of one link's channels (each a mean over calibration passes)."""

    closed: torch.Tensor  # (C,) fraction of the consumer's input elements that were zero
    energy: torch.Tensor  # (C,) mean GAP(x^2) at the gate's input
    moments: torch.Tensor | None  # (C,) mean of the GDN normalisation input (x^2), None without a GDN
    passes: int


def gated_links(net) -> dict[str, Link]:
    return {name: link for name, link in find_links(net).items()
            if isinstance(net.get_submodule(link.consumer), EcgConv)}


@torch.no_grad()
def measure(wrapped, images: list[torch.Tensor], lambdas: list[float | None], registry=None) -> dict[str, LinkUsage]:
    """Per gated link, how often each channel is closed on ``images`` (padded (1, 3, H, W)) at each rate."""
    from vrtk.rate import use_rate

    net = wrapped.net
    links = gated_links(net)
    sums: dict[str, dict[str, torch.Tensor]] = {name: {} for name in links}

    def add(name: str, key: str, value: torch.Tensor) -> None:
        sums[name][key] = sums[name].get(key, 0) + value.double()

    handles, sparse = [], {}
    for name, link in links.items():
        gated = net.get_submodule(link.consumer)
        sparse[name] = gated.sparse
        gated.sparse = False  # the dense path hands the masked input to base_layer, where zeros are counted
        handles.append(gated.register_forward_pre_hook(
            lambda m, inp, _n=name: add(_n, "energy", (inp[0] * inp[0]).mean(dim=(-2, -1)).sum(0))))
        handles.append(gated.base_layer.register_forward_pre_hook(
            lambda m, inp, _n=name: add(_n, "closed", (inp[0] == 0).double().mean(dim=(-2, -1)).sum(0))))
        for path in link.between:
            module = net.get_submodule(path)
            if is_gdn(module):
                handles.append(module.register_forward_pre_hook(
                    lambda m, inp, _n=name: add(_n, "moments", gdn_moment(m, inp[0]) * inp[0].shape[0])))
    was_training = net.training
    passes = 0
    try:
        net.eval()
        for lmbda in lambdas:
            with use_rate(net, lmbda, registry):
                for x in images:
                    net(x)
                    passes += x.shape[0]
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()
        for name, link in links.items():
            net.get_submodule(link.consumer).sparse = sparse[name]
    if not passes:
        raise PluginError("ecg slim: no calibration images")
    return {name: LinkUsage(closed=s["closed"].cpu() / passes, energy=s["energy"].cpu() / passes,
                            moments=s["moments"].cpu() / passes if "moments" in s else None, passes=passes)
            for name, s in sums.items() if "closed" in s}


def channels_to_keep(closed: torch.Tensor, min_closed: float) -> torch.Tensor:
    """Indices of the channels closed on less than ``min_closed`` of the inputs; the most open one if none is."""
    keep = torch.nonzero(closed < min_closed).flatten()
    return keep if len(keep) else closed.argmin().reshape(1)


def _gated_plugin(wrapped) -> PluginUse | None:
    return next((p for p in wrapped.plugins if p.name in GATED_PLUGINS), None)


@torch.no_grad()
def build(wrapped, usage: dict[str, LinkUsage], min_closed: float, compensate: bool, extra: dict, registry=None):
    """(slim WrappedModel, per-link report rows) from the calibration statistics."""
    use = _gated_plugin(wrapped)
    config = dict(use.config)
    full = dict(config.get("full_channels") or {})
    kept_map = {k: list(v) for k, v in (config.get("kept_channels") or {}).items()}
    net = copy.deepcopy(wrapped.net)
    links = gated_links(net)
    rows, widths = [], {}
    for name, stats in usage.items():
        link = links[name]
        keep = channels_to_keep(stats.closed.float(), min_closed)
        removed = torch.ones(link.width, dtype=torch.bool)
        removed[keep] = False
        row = {"link": name, "layer": link.consumer, "width": link.width, "kept": len(keep),
               "gdn": any(is_gdn(net.get_submodule(p)) for p in link.between),
               "closed_removed_min": float(stats.closed[removed].min()) if removed.any() else None,
               "closed_kept_max": float(stats.closed[keep].max()), "norm_share": 0.0}
        rows.append(row)
        if len(keep) == link.width:
            continue
        consumer = net.get_submodule(link.consumer)
        old = consumer.gate
        current = kept_map.get(name, list(range(link.width)))
        full_width = int(full.get(name, link.width))
        fill = old.eca_fill.clone() if isinstance(old, SlimEnergyGate) else torch.zeros(full_width)
        for j in torch.nonzero(removed).flatten().tolist():
            fill[current[j]] = float(stats.energy[j])
        row["norm_share"] = narrow_link(net, link, keep, stats.moments, compensate)
        gate = slim_gate(consumer, [current[i] for i in keep.tolist()], full_width)
        gate.alpha.copy_(old.alpha[keep])
        gate.eca_weight.copy_(old.eca_weight)
        gate.initialized.copy_(old.initialized)
        gate.eca_fill.copy_(fill)
        full[name], kept_map[name], widths[name] = full_width, [current[i] for i in keep.tolist()], len(keep)
    if not widths:
        most = ", ".join(f"{r['link']} {max(usage[r['link']].closed.tolist()):.3f}" for r in rows)
        raise PluginError(f"ecg slim: no channel is closed on {min_closed:.0%} of the calibration inputs, nothing to "
                          f"remove (most-closed channel per link: {most}); a lower --min-closed removes more")
    # The removed channels were most of what the sparsity target counted: kept, it would make a fine-tune of the slim
    # model (slim-finetune) close the remaining channels too. Inference does not read it.
    config.update(full_channels=full, kept_channels=kept_map, sparsity_target=0.0)
    plugins = [PluginUse("ecg-slim", config, p.version) if p is use else PluginUse(p.name, dict(p.config), p.version)
               for p in wrapped.plugins]
    return assemble(wrapped, net, widths, plugins, extra, registry), rows


def calibration_lambdas(wrapped, registry=None) -> list[float | None]:
    """The rates to calibrate at: none for a model that takes no rate, else every trained lambda."""
    from vrtk.api import needs_rate

    return sorted(wrapped.lambdas) if needs_rate(wrapped, registry) else [None]


def slim(wrapped, images: list[torch.Tensor], settings: dict, registry=None):
    """The ``vrtk_slim`` hook: (slim WrappedModel, report), or None for a model without ECG gates."""
    if _gated_plugin(wrapped) is None:
        return None
    slim_base_spec(wrapped, {})  # an architecture vrtk can slim, before any calibration runs
    min_closed = float(settings.get("min_closed", 0.99))
    if not 0.0 < min_closed <= 1.0:
        raise PluginError(f"ecg slim: min_closed must be in (0, 1], not {min_closed}")
    compensate = bool(settings.get("compensate", True))
    lambdas = settings.get("lambdas") or calibration_lambdas(wrapped, registry)
    usage = measure(wrapped, images, lambdas, registry)
    if not usage:
        raise PluginError("ecg slim: no gate reads channels between two convolutions of a plain chain (conv, GDN or "
                          "activation, conv: bmshj2018 / mbt2018 transforms); nothing here can be slimmed")
    extra = {**wrapped.extra, "slim": {"min_closed": min_closed, "gdn_compensation": compensate,
                                       "calibration_images": len(images), "calibration_lambdas": lambdas,
                                       "from_fingerprint": wrapped.fingerprint()}}
    model, rows = build(wrapped, usage, min_closed, compensate, extra, registry)
    report = {"links": rows, "min_closed": min_closed, "gdn_compensation": compensate,
              "calibration_images": len(images), "calibration_lambdas": lambdas}
    if compensate and settings.get("also_uncompensated") and any(r["norm_share"] for r in rows):
        report["uncompensated_model"] = build(wrapped, usage, min_closed, False, extra, registry)[0]
    return model, report
