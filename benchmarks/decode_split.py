"""Where dense decoding time goes, layer by layer: the ceiling on what skipping gated inputs can save.

Times every child of g_s and h_s (forward hooks, wall clock) during real decompression of the base network with the
ECG gates removed, in channels-last, and prints each one's median share of the median decode. The gated layers'
share bounds the speed-up: skipping a fraction f of their work for free leaves 1 - f * share of the decode.

    python benchmarks/decode_split.py runs/reproduce/ecg-channel-0.0035/model --images 6
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ecg_speed import KODAK, load_images  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a vrtk model folder with ECG")
    p.add_argument("--data", default=str(KODAK))
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from vrtk_plugins.ecg.plugin import unwrap

    from vrtk.codec import pad
    from vrtk.model import load_model
    from vrtk.rate import use_rate

    wrapped = load_model(args.model)
    gated = {name.rsplit(".", 1)[0] for name, m in wrapped.net.named_modules() if name.endswith(".gate")}
    dense = unwrap(copy.deepcopy(wrapped.net)).eval()
    dense.update(force=True)
    dense.to(memory_format=torch.channels_last)
    layers = {f"{part}.{name}": m for part in ("h_s", "g_s") for name, m in getattr(dense, part).named_children()}
    spans: dict[str, list[float]] = {name: [] for name in layers}
    recording = [False]  # warm-up decodes are not counted

    def starts(name):
        def hook(module, inputs):
            if recording[0]:
                spans[name].append(-time.perf_counter())
        return hook

    def ends(name):
        def hook(module, inputs, output):
            if recording[0]:
                spans[name][-1] += time.perf_counter()
        return hook

    for name, module in layers.items():
        module.register_forward_pre_hook(starts(name))
        module.register_forward_hook(ends(name))
    totals = []
    with torch.no_grad(), use_rate(dense, wrapped.middle_lambda()):
        for _, img in load_images(args.data, args.images):
            x = pad(img)[0].contiguous(memory_format=torch.channels_last)
            coded = dense.compress(x)
            recording[0] = False
            dense.decompress(coded["strings"], coded["shape"])
            recording[0] = True
            for _ in range(args.repeats):
                start = time.perf_counter()
                dense.decompress(coded["strings"], coded["shape"])
                totals.append(time.perf_counter() - start)
    total = statistics.median(totals)
    print(f"# {args.model}: dense decode, channels-last, {args.images} images x {args.repeats}, "
          f"{args.threads} thread(s); median {total * 1e3:.1f} ms")
    shares = {name: statistics.median(spans[name]) / total for name in layers}
    for name, module in layers.items():
        mark = "gated" if name in gated else ""
        print(f"{name:<8} {type(module).__name__:<16} {mark:<6} {shares[name] * 100:5.1f} %")
    print(f"gated layers {sum(s for n, s in shares.items() if n in gated) * 100:.1f} %, "
          f"other g_s/h_s layers {sum(s for n, s in shares.items() if n not in gated) * 100:.1f} %, "
          f"the rest (entropy decoding, indexes, padding) {(1 - sum(shares.values())) * 100:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
