"""Start a model of another architecture or width from a trained one (warm start for the base study).

    python benchmarks/transplant.py default --arch mbt2018-mean -o /tmp/mbt-start
    python benchmarks/transplant.py default --arch mbt2018-mean --N 128 -o /tmp/mbt-wide-start

Every tensor whose name and shape match is copied. A wider model (``--N``/``--M``) gets the trained tensor in its
leading channels (Net2Net-style widening): the new channels keep the fresh model's initialisation, and the new
input columns of convolutions are shrunk 10x so the old channels start close to what they computed before. GDN
parameters and entropy-model tensors of new channels keep their own initialisation (GDN's fresh gamma is diagonal,
so old channels are not normalised by new ones).

Used for the base study's architecture comparison (README, "The base"): bmshj2018-hyperprior and mbt2018-mean share
g_a, g_s, h_a and the entropy bottleneck at the same N/M, so a mean-scale model can start from the shipped default
and only its hyper-synthesis (which predicts means and scales) starts from random weights. The plugins and their
configs are those of the source model. Prints which tensors were copied and which start fresh.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vrtk.model import _fit_buffers, resolve_model, save_model, wrap
from vrtk.zoo import BaseSpec

NEW_INPUT_SHRINK = 0.1


def _widened(fresh: torch.Tensor, trained: torch.Tensor) -> torch.Tensor | None:
    """The fresh tensor with the trained one in its leading slice, or None when the trained one does not fit."""
    if fresh.ndim != trained.ndim or any(f < t for f, t in zip(fresh.shape, trained.shape, strict=True)):
        return None
    out = fresh.clone()
    if out.ndim == 4:  # a convolution: shrink the weights that read new channels
        out *= NEW_INPUT_SHRINK
    out[tuple(slice(0, n) for n in trained.shape)] = trained
    return out


def transplant(source: str, arch: str, out: Path, widths: dict[str, int] | None = None
               ) -> tuple[list[str], list[str]]:
    donor = resolve_model(source)
    sizes = dict(donor.base.arch_kwargs) or {}
    if not sizes:
        raise SystemExit(f"{source}: its sizes are not recorded; transplant needs N/M")
    sizes.update(widths or {})
    configs = {use.name: dict(use.config) for use in donor.plugins}
    target = wrap(BaseSpec(arch=arch, arch_kwargs=sizes, weights="random"), [u.name for u in donor.plugins], configs)
    given = donor.net.state_dict()
    own = target.net.state_dict()
    merged = {}
    for key, fresh_tensor in own.items():
        trained = given.get(key)
        if trained is not None and not key.rsplit(".", 1)[-1].startswith("_"):  # coder tables are rebuilt
            merged[key] = trained.float() if trained.shape == fresh_tensor.shape else \
                _widened(fresh_tensor, trained.float())
    merged = {k: v for k, v in merged.items() if v is not None}
    copied = sorted(merged)
    fresh = [k for k in own if k not in merged and not k.rsplit(".", 1)[-1].startswith("_")]
    _fit_buffers(target.net, own)
    target.net.load_state_dict({**own, **merged})
    target.lambdas = list(donor.lambdas or [])
    target.metric = donor.metric
    target.extra["transplanted_from"] = {"model": source, "arch": donor.base.arch, "copied": len(copied),
                                         "fresh": len(fresh)}
    target.net.update(force=True)
    save_model(target.to("cpu"), out, full=True)
    return copied, fresh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="model name or folder to copy from")
    parser.add_argument("--arch", required=True, help="the architecture to build")
    parser.add_argument("--N", type=int, help="widen the transforms to N channels")
    parser.add_argument("--M", type=int, help="widen the latent to M channels")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    widths = {k: v for k, v in (("N", args.N), ("M", args.M)) if v}
    copied, fresh = transplant(args.source, args.arch, args.output, widths)
    print(f"copied or widened {len(copied)} tensors; fresh: {', '.join(fresh) or 'none'}")
    print(f"model saved: {args.output}")


if __name__ == "__main__":
    main()
