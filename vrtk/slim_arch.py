"""Registered architectures with per-link widths: ``bmshj2018-hyperprior-slim`` and friends.

CompressAI's models take one N for every layer of g_a/g_s/h_a/h_s, so a model with some channels removed
(vrtk/slim.py) is no CompressAI size. These architectures build the CompressAI model at ``N``/``M`` and then give
each named link (``ga1`` .. ``hs2``) the width asked for, so a slim model folder names a registered architecture with
integer sizes only -- ``{"N": 64, "M": 96, "gs2": 41, ...}`` -- and loads like any other (no code from the folder).
The latent widths (M, and N for z) never change: entropy models and bitstreams keep their shape.

They are vrtk's own architectures (``source="vrtk"``, registered by vrtk.zoo), listed by ``vrtk models``; the class
built is CompressAI's. This module only builds them; :mod:`vrtk.slimming` makes slim model folders.
"""

from __future__ import annotations

import torch
from torch import nn

from vrtk.slim import conv_of, find_links, narrow_link

SUFFIX = "-slim"
# CompressAI architectures whose four transforms are plain chains (cheng2020's residual blocks are not)
SLIM_BASES = ("bmshj2018-factorized", "bmshj2018-factorized-relu", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018")


def build_slim(base: str, factory, N: int, M: int, **widths: int) -> nn.Module:
    """The architecture ``base`` (built by ``factory``) at N/M with each named link narrowed to its width (fresh
    weights). vrtk.zoo registers one ``<base>-slim`` architecture per name in SLIM_BASES with this builder."""
    net = factory(N=N, M=M)
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
