"""Registered architectures with per-link widths: ``bmshj2018-hyperprior-slim`` and friends.

CompressAI's models take one N for every layer of g_a/g_s/h_a/h_s, so a model with some channels removed
(vrtk/slim.py) is no CompressAI size. These architectures build the CompressAI model at ``N``/``M`` and then give
each named link (``ga1`` .. ``hs2``) the width asked for, so a slim model folder names a registered architecture with
integer sizes only -- ``{"N": 64, "M": 96, "gs2": 41, ...}`` -- and loads like any other (no code from the folder).
The latent widths (M, and N for z) never change: entropy models and bitstreams keep their shape.

They are vrtk's own architectures (``source="vrtk"``), listed by ``vrtk models``; the class built is CompressAI's.
"""

from __future__ import annotations

import functools

from torch import nn

from vrtk.errors import ModelError

SUFFIX = "-slim"
# CompressAI architectures whose four transforms are plain chains (cheng2020's residual blocks are not)
SLIM_BASES = ("bmshj2018-factorized", "bmshj2018-factorized-relu", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018")


def build_slim(base: str, N: int, M: int, **widths: int) -> nn.Module:
    """The ``base`` architecture at N/M with each named link narrowed to its width (fresh weights)."""
    import torch

    from vrtk.slim import conv_of, find_links, narrow_link
    from vrtk.zoo import _compressai_archs

    net = _compressai_archs()[base].factory(N=N, M=M)
    links = find_links(net)
    unknown = sorted(set(widths) - set(links))
    if unknown:
        raise ValueError(f"{base}{SUFFIX} has no link {', '.join(unknown)} (its links: {', '.join(links)})")
    for name, width in widths.items():
        link = links[name]
        if not (isinstance(width, int) and 1 <= width <= link.width):
            raise ValueError(f"{name} must be a width 1..{link.width} (its width at N={N}, M={M}), not {width!r}")
        if width < link.width:
            narrow_link(net, link, torch.arange(width))
            for path in (link.producer, link.consumer):  # initialised for their new fan-in/out, like a fresh model
                conv_of(net.get_submodule(path)).reset_parameters()
    return net


@functools.cache
def slim_archs() -> dict:
    """name -> ArchSpec of every slim architecture (the sizes per quality are the base's)."""
    from vrtk.zoo import ArchSpec, _compressai_archs

    specs = {}
    for name in SLIM_BASES:
        base = _compressai_archs()[name]
        specs[name + SUFFIX] = ArchSpec(
            name + SUFFIX, functools.partial(build_slim, name), base.sizes,
            f"{base.paper}, with per-layer widths (vrtk export --slim)", None, source="vrtk")
    return specs


def base_of(arch: str) -> str | None:
    """The CompressAI architecture under a slim one (or the name itself when it can be slimmed), else None."""
    from vrtk.zoo import canonical_name

    name = canonical_name(arch).removesuffix(SUFFIX)
    return name if name in SLIM_BASES else None


def slim_base_spec(wrapped, widths: dict[str, int]):
    """The BaseSpec of ``wrapped``'s base with these link widths (merged with the widths it already has)."""
    from vrtk.fold import real_architecture
    from vrtk.zoo import BaseSpec

    arch, sizes = real_architecture(wrapped)
    base = base_of(arch)
    if base is None:
        raise ModelError(f"{arch}: only {', '.join(SLIM_BASES)} (and their -slim versions) can be slimmed; "
                         "their transforms are plain chains of convolutions")
    kwargs = {**sizes, **{k: int(v) for k, v in widths.items()}}
    return BaseSpec(arch=base + SUFFIX, arch_kwargs=kwargs, metric=wrapped.metric, weights="random")
