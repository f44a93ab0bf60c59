"""Removing channels between two convolutions: the generic half of ``vrtk export --slim``.

A CompressAI transform is a chain ``conv -> [GDN | activation] -> conv -> ...``. The channels between two
consecutive convolutions (a *link*) can be removed together: the producing convolution's output channels, the GDN's
rows and columns, the consuming convolution's input channels. Links are named by transform and position -- ``ga1``
lies between the first and the second convolution of g_a, ``hs2`` between the second and the third of h_s -- so a
link's width can be an argument of an architecture (vrtk/slim_arch.py) and a plugin can say which channels it keeps.

When the consumer only ever reads zeros in a removed channel (a gate closes it), the consumer's output does not
change. The GDN normalisation of the kept channels does, as it sums every input channel:
``norm_i = beta_i + sum_j gamma_ij x_j^2``. :func:`narrow_link` can fold the removed channels' mean contribution
``sum_j gamma_ij E[x_j^2]`` into ``beta_i`` (given the calibration moments); what that costs in quality is measured
by the caller, not assumed. Which channels to remove is a plugin's business (a gate knows which it closes): the
core asks plugins through the ``vrtk_slim`` hook (:func:`vrtk.slimming.slim_model`) and offers
:func:`vrtk.slimming.assemble` to turn a narrowed network into a model of a registered slim architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vrtk.errors import ModelError
from vrtk.injection import Adapter

TRANSFORM_KEYS = {"g_a": "ga", "g_s": "gs", "h_a": "ha", "h_s": "hs"}
CONVS = (nn.Conv2d, nn.ConvTranspose2d)
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Identity)  # elementwise, no per-channel state


@dataclass
class Link:
    """The channels between two consecutive convolutions of a transform (paths relative to the network)."""

    name: str  # e.g. "gs2"
    producer: str  # the convolution writing the channels (or an adapter holding it)
    between: list[str]  # GDN / activations on the way
    consumer: str  # the convolution reading them (or an adapter holding it, e.g. a gate)
    width: int


def conv_of(module: nn.Module) -> nn.Module | None:
    """The convolution a module is, or holds as an adapter's ``base_layer`` (looking through nested adapters)."""
    while isinstance(module, Adapter) and isinstance(getattr(module, "base_layer", None), nn.Module):
        module = module.base_layer
    return module if isinstance(module, CONVS) else None


def is_gdn(module: nn.Module) -> bool:
    from compressai.layers import GDN

    return isinstance(module, GDN)


def chain_root(transform: nn.Module) -> tuple[str, nn.Sequential] | None:
    """(path relative to ``transform``, module) of the Sequential whose children are the transform's convolutions,
    looking through wrappers a plugin put around it (bm: ``Sequential(g_a, Modulate)``); None if there is none."""
    convs = [n for n, m in transform.named_modules()
             if n and conv_of(m) is not None and "base_layer" not in n.split(".")]
    parents = {n.rpartition(".")[0] for n in convs}
    if len(convs) < 2 or len(parents) != 1:
        return None
    parent = parents.pop()
    root = transform.get_submodule(parent) if parent else transform
    return (parent, root) if isinstance(root, nn.Sequential) else None


def transform_links(net: nn.Module, transform: str) -> list[Link]:
    """The links of one transform, or [] when it is not a plain chain (residual blocks, attention: not handled)."""
    module = getattr(net, transform, None)
    found = chain_root(module) if isinstance(module, nn.Module) else None
    if found is None:
        return []
    parent, root = found
    prefix = f"{transform}.{parent}." if parent else f"{transform}."
    links, producer, between = [], None, []
    for child_name, child in root.named_children():
        conv = conv_of(child)
        if conv is not None:
            if conv.groups != 1:
                return []
            if producer is not None:
                key = f"{TRANSFORM_KEYS.get(transform, transform)}{len(links) + 1}"
                width = conv_of(net.get_submodule(producer)).out_channels
                links.append(Link(key, producer, between, prefix + child_name, width))
            producer, between = prefix + child_name, []
        elif is_gdn(child) or isinstance(child, ACTIVATIONS):
            between.append(prefix + child_name)
        else:
            return []  # something with per-channel state we do not know how to narrow
    return links


def find_links(net: nn.Module) -> dict[str, Link]:
    """Every link of g_a, g_s, h_a and h_s, by name."""
    return {link.name: link for t in TRANSFORM_KEYS for link in transform_links(net, t)}


def _replace_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.detach().clone().contiguous(), requires_grad=old.requires_grad))


@torch.no_grad()
def narrow_conv(conv: nn.Module, keep: torch.Tensor, side: str) -> None:
    """Keep only the ``keep`` output (``side="out"``) or input (``"in"``) channels of a convolution, in place."""
    transposed = isinstance(conv, nn.ConvTranspose2d)
    dim = {("out", False): 0, ("in", False): 1, ("out", True): 1, ("in", True): 0}[(side, transposed)]
    keep = keep.to(conv.weight.device)
    _replace_parameter(conv, "weight", conv.weight.index_select(dim, keep))
    if side == "out":
        if conv.bias is not None:
            _replace_parameter(conv, "bias", conv.bias.index_select(0, keep))
        conv.out_channels = len(keep)
    else:
        conv.in_channels = len(keep)


@torch.no_grad()
def narrow_gdn(gdn: nn.Module, keep: torch.Tensor, moments: torch.Tensor | None = None,
               compensate: bool = True) -> float:
    """Keep the ``keep`` channels of a GDN/IGDN, in place.

    ``moments`` (one value per original channel: E[x^2], or E[|x|] for GDN1, over calibration images) measure
    the removed channels' share of each kept channel's mean normalisation, ``sum_removed gamma_ij m_j /
    (beta_i + sum_all gamma_ij m_j)``; its largest value is returned (0.0 without moments). With ``compensate``
    that share is folded into beta. Beta is rewritten only then: the reparametrisation round trip would otherwise
    change its last bits."""
    keep = keep.to(gdn.beta.device)
    removed = torch.ones(gdn.beta.shape[0], dtype=torch.bool, device=keep.device)
    removed[keep] = False
    gamma = gdn.gamma_reparam(gdn.gamma)  # gamma[i, j]: weight of input channel j in channel i's normalisation
    beta = gdn.beta_reparam(gdn.beta)
    extra, share = None, 0.0
    if moments is not None and bool(removed.any()):
        moments = moments.to(gamma)
        extra = (gamma[keep][:, removed] * moments[removed]).sum(dim=1)
        share = float((extra / (beta[keep] + gamma[keep] @ moments)).max())
    _replace_parameter(gdn, "gamma", gdn.gamma[keep][:, keep])
    if compensate and extra is not None and bool((extra != 0).any()):
        _replace_parameter(gdn, "beta", gdn.beta_reparam.init(beta[keep] + extra))
    else:
        _replace_parameter(gdn, "beta", gdn.beta[keep])
    return share


@torch.no_grad()
def narrow_link(net: nn.Module, link: Link, keep: torch.Tensor, moments: torch.Tensor | None = None,
                compensate: bool = True) -> float:
    """Remove every channel of ``link`` not in ``keep`` (sorted indices), in place; returns what
    :func:`narrow_gdn` returns for the GDN on the link (0.0 without one)."""
    keep = torch.as_tensor(keep, dtype=torch.long).flatten()
    if not len(keep) or bool((keep[1:] <= keep[:-1]).any()) or int(keep[0]) < 0 or int(keep[-1]) >= link.width:
        raise ModelError(f"link {link.name}: channels to keep must be increasing indices in 0..{link.width - 1} "
                         f"(at least one), not {keep.tolist()[:8]}")
    narrow_conv(conv_of(net.get_submodule(link.producer)), keep, "out")
    share = 0.0
    for path in link.between:
        module = net.get_submodule(path)
        if is_gdn(module):
            share = max(share, narrow_gdn(module, keep, moments, compensate))
    narrow_conv(conv_of(net.get_submodule(link.consumer)), keep, "in")
    link.width = len(keep)
    return share


def gdn_moment(gdn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per input channel, the mean of what the GDN's normalisation sums (x^2; |x| for GDN1) over a batch."""
    from compressai.layers import GDN1

    values = x.abs() if isinstance(gdn, GDN1) else x * x
    return values.mean(dim=(0, 2, 3))
