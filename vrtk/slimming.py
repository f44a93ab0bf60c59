"""Slim model folders: which architecture a slimmed model gets, asking plugins to slim a model (hook ``vrtk_slim``),
and assembling a narrowed network into a model of a registered slim architecture (vrtk/slim_arch.py).

The channel surgery itself is in vrtk/slim.py; this module sits above the model layer and ties the two together.
"""

from __future__ import annotations

import torch
from torch import nn

from vrtk.errors import ModelError
from vrtk.fold import real_architecture
from vrtk.model import WrappedModel, wrap
from vrtk.plugin_manager import get_registry
from vrtk.slim_arch import SLIM_BASES, SUFFIX
from vrtk.zoo import BaseSpec, canonical_name


def base_of(arch: str) -> str | None:
    """The CompressAI architecture under a slim one (or the name itself when it can be slimmed), else None."""
    name = canonical_name(arch).removesuffix(SUFFIX)
    return name if name in SLIM_BASES else None


def slim_base_spec(wrapped, widths: dict[str, int]):
    """The BaseSpec of ``wrapped``'s base with these link widths (merged with the widths it already has)."""
    arch, sizes = real_architecture(wrapped)
    base = base_of(arch)
    if base is None:
        raise ModelError(f"{arch}: only {', '.join(SLIM_BASES)} (and their -slim versions) can be slimmed; "
                         "their transforms are plain chains of convolutions")
    kwargs = {**sizes, **{k: int(v) for k, v in widths.items()}}
    return BaseSpec(arch=base + SUFFIX, arch_kwargs=kwargs, metric=wrapped.metric, weights="random")


def slim_model(wrapped, images: list[torch.Tensor], settings: dict, registry=None):
    """Ask the installed plugins for a slim version of ``wrapped`` (hook ``vrtk_slim``): (WrappedModel, report).

    ``images``: calibration images, each (1, 3, H, W) padded as the codec pads them."""
    registry = registry or get_registry()
    answers = registry.call("vrtk_slim", model=wrapped, images=images, settings=dict(settings))
    if not answers:
        names = ", ".join(p.name for p in wrapped.plugins) or "none"
        raise ModelError(f"no installed plugin can slim this model (plugins: {names}): slimming removes the channels "
                         "a gating plugin (ecg) closes, so the model must have gates")
    if len(answers) > 1:
        raise ModelError(f"several plugins offer to slim this model ({', '.join(n for n, _ in answers)}); "
                         "slim it with one of them at a time")
    return answers[0][1]


def assemble(wrapped, net: nn.Module, widths: dict[str, int], plugins: list, extra: dict, registry=None):
    """A WrappedModel of the registered slim architecture with ``widths``, ``plugins`` injected in order and the
    tensors of the narrowed ``net`` loaded strictly: what ``load_model`` will build from its folder."""
    spec = slim_base_spec(wrapped, widths)
    fresh = wrap(spec, [p.name for p in plugins], {p.name: dict(p.config) for p in plugins}, registry=registry)
    state = net.state_dict()
    own = fresh.net.state_dict()
    wrong = sorted(set(own) ^ set(state)) + [k for k in own if k in state and own[k].shape != state[k].shape
                                             and k.rsplit(".", 1)[-1] not in ("_quantized_cdf", "_offset",
                                                                               "_cdf_length", "scale_table")]
    if wrong:
        raise ModelError(f"the narrowed network does not fit {spec.arch} {spec.arch_kwargs}: {wrong[:6]}")
    fresh.net.load_state_dict(state, strict=True)  # CompressionModel resizes the entropy tables
    fresh.net.update(force=True)
    for used, planned in zip(fresh.plugins, plugins, strict=True):
        used.version = planned.version or used.version
    return WrappedModel(net=fresh.net.eval(), base=spec, plugins=fresh.plugins, sites=fresh.sites,
                        lambdas=list(wrapped.lambdas), metric=wrapped.metric, extra=extra)
