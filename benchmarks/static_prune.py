"""Static channel pruning to a MAC budget: the baseline ECG must beat at equal MACs (issue 15, section 2).

    python benchmarks/static_prune.py bmshj2018-hyperprior --weights base.safetensors --arch-kwargs '{"N":64,"M":96}' \\
        --match results/ecg-study/t0.6.json -o /tmp/pruned
    python benchmarks/static_prune.py default-base --keep 0.5 -o /tmp/pruned-half

Every link between two convolutions of g_a, g_s, h_a and h_s (vrtk/slim.py; the latents never change width) keeps
the same fraction of its channels, ranked by ``|producer output filter| * |consumer input filter|`` (L2 norms:
a channel matters only if it is both written and read with weight). The fraction is either given (``--keep``) or
found by bisection so that the pruned model's dense encoder + decoder kMACs per pixel equal those of an evaluated
gated model (``--match RESULTS.json``, e.g. an ECG model at one lambda) counted as its dense MACs less what its gated
layers saved: equal work per pixel, counted by vrtk.flops, with the zeros both models get for free (the quantised
latent's) counted as savings on neither side. GDN normalisations of the kept channels get the removed channels'
mean contribution folded into beta (calibrated on ``--calibration`` images, as ``vrtk export --slim`` does).

The output is a model folder of a registered slim architecture (``bmshj2018-hyperprior-slim`` ...), to fine-tune
with any recipe, e.g. ``vrtk run fixed-rate profile=cpu model=/tmp/pruned lambdas=[0.0035] train=all``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from vrtk.commands.common import add_model_args, load_from_args
from vrtk.commands.slim import load_calibration
from vrtk.eval.report import _total, gated_layer_kmacs, load_curves
from vrtk.flops import dense_kmacs_per_pixel
from vrtk.model import save_model
from vrtk.slim import conv_of, find_links, gdn_moment, is_gdn, narrow_link
from vrtk.slimming import assemble, slim_base_spec

BISECTION_STEPS = 14
CALIBRATION_SIDE = 256


def channel_scores(net: torch.nn.Module, link) -> torch.Tensor:
    """Per channel of a link: the norm of the filter writing it times the norm of the filter reading it."""
    producer, consumer = conv_of(net.get_submodule(link.producer)), conv_of(net.get_submodule(link.consumer))
    out_dim = 1 if isinstance(producer, torch.nn.ConvTranspose2d) else 0
    in_dim = 0 if isinstance(consumer, torch.nn.ConvTranspose2d) else 1
    written = producer.weight.detach().transpose(0, out_dim).flatten(1).norm(dim=1)
    read = consumer.weight.detach().transpose(0, in_dim).flatten(1).norm(dim=1)
    return written * read


def gdn_moments(net: torch.nn.Module, links: dict, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per link with a GDN: the mean of what the GDN sums per input channel, over the calibration images."""
    gdns = {name: net.get_submodule(path) for name, link in links.items() for path in link.between
            if is_gdn(net.get_submodule(path))}
    sums: dict[str, torch.Tensor] = {}
    handles = [gdn.register_forward_pre_hook(lambda m, inputs, _n=name: sums.__setitem__(
        _n, sums.get(_n, 0) + gdn_moment(m, inputs[0]))) for name, gdn in gdns.items()]
    try:
        with torch.no_grad():
            for image in images:
                net(image)
    finally:
        for handle in handles:
            handle.remove()
    return {name: value / len(images) for name, value in sums.items()}


def pruned(wrapped, keep: float, moments: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, dict[str, int]]:
    """A copy of the network with ``keep`` of every link's channels (the highest-scoring ones)."""
    net = copy.deepcopy(wrapped.net)
    widths = {}
    for name, link in find_links(net).items():
        width = max(1, round(keep * link.width))
        order = channel_scores(net, link).argsort(descending=True)[:width]
        narrow_link(net, link, order.sort().values, moments.get(name), compensate=True)
        widths[name] = width
    return net, widths


def total_kmacs(net: torch.nn.Module) -> float:
    macs = dense_kmacs_per_pixel(net)
    return macs["encoder"] + macs["decoder"]


def matched_kmacs(results: Path) -> float:
    """What the evaluated model (first point) costs per pixel with its plugin's savings and nothing else: its dense
    encoder + decoder kMACs less what its gated layers saved (dense - effective there). Zeros the base computes
    anyway (the quantised latent's) are not counted as savings on either side."""
    curve = load_curves([str(results)])[0]
    dense, gated = _total(curve, 0, "dense"), gated_layer_kmacs(curve, 0)
    if dense is None or gated is None:
        raise SystemExit(f"{results}: no MAC counts or no gated layers (evaluate a gated model without --no-macs)")
    return dense - (gated[0] - gated[1])


def find_keep(wrapped, moments, target: float) -> float:
    """The largest keep fraction whose pruned model needs at most ``target`` kMACs per pixel."""
    low, high = 0.02, 1.0
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        net, _ = pruned(wrapped, middle, moments)
        low, high = (middle, high) if total_kmacs(net) <= target else (low, middle)
    return low


def calibration_images(folder: str | None, count: int) -> list[torch.Tensor]:
    """The first ``count`` images of ``folder`` as ``vrtk export --slim`` loads them, top-left 256 x 256 of each."""
    side = CALIBRATION_SIDE
    return [image[None, :, :side, :side] for image in load_calibration(folder, count)] if folder else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--keep", type=float, help="fraction of every link's channels to keep, (0, 1]")
    budget.add_argument("--match", type=Path, help="a vrtk eval results JSON whose effective kMACs/px to match")
    parser.add_argument("--calibration", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"
                                                    / "photos-train"),
                        help="images for the GDN compensation ('' for none)")
    parser.add_argument("--calibration-images", type=int, default=8)
    parser.add_argument("-o", "--output", required=True, type=Path)
    args = parser.parse_args()
    if args.output.exists():
        print(f"{args.output} exists; choose a new folder", file=sys.stderr)
        return 2
    wrapped = load_from_args(args).to("cpu")
    wrapped.net.eval()
    slim_base_spec(wrapped, {})  # an architecture vrtk can slim, before any work
    links = find_links(wrapped.net)
    moments = gdn_moments(wrapped.net, links, calibration_images(args.calibration, args.calibration_images))
    dense = total_kmacs(wrapped.net)
    if args.keep is not None:
        if not 0 < args.keep <= 1:
            print("--keep must be in (0, 1]", file=sys.stderr)
            return 2
        keep = args.keep
    else:
        target = matched_kmacs(args.match)
        keep = find_keep(wrapped, moments, target)
        print(f"target {target:.3f} kMAC/px ({args.match}: dense less its gated layers' savings); dense {dense:.3f}")
    net, widths = pruned(wrapped, keep, moments)
    model = assemble(wrapped, net, widths, list(wrapped.plugins),
                     {"static_prune": {"keep": keep, "widths": widths, "source": args.model,
                                       "ranking": "|producer filter| * |consumer filter|"}})
    save_model(model, args.output)
    print(f"keep {keep:.4f} of every link: {widths}")
    print(f"kMAC/px encoder+decoder: {dense:.3f} -> {total_kmacs(model.net):.3f} "
          f"({dense / total_kmacs(model.net):.2f}x fewer); model folder: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
