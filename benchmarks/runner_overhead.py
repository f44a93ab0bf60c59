"""Training-loop overhead: vrtk's Trainer step vs a bare PyTorch loop on the same model and batches.

    python benchmarks/runner_overhead.py --steps 40 --threads 2

Both loops do the same work (forward, rate-distortion loss, backward, clipping, Adam, the aux optimizer of the
entropy-bottleneck quantiles); blocks of steps alternate between them so machine noise hits both alike.
Prints median seconds per step of each and the ratio bare/vrtk (1.0 = no overhead; the target is >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def bare_loop_factory(net, lmbda: float, lr: float, clip: float):
    from compressai.losses import RateDistortionLoss

    main = [p for n, p in net.named_parameters() if not n.endswith("quantiles")]
    aux = [p for n, p in net.named_parameters() if n.endswith("quantiles")]
    opt, aux_opt = torch.optim.Adam(main, lr=lr), torch.optim.Adam(aux, lr=1e-3)
    criterion = RateDistortionLoss(lmbda=lmbda)

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = criterion(net(x), x)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main, clip)
        opt.step()
        aux_opt.zero_grad(set_to_none=True)
        net.aux_loss().backward()
        aux_opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per loop")
    parser.add_argument("--block", type=int, default=5, help="steps per alternating block")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--M", type=int, default=96)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import tempfile
    from pathlib import Path

    from vrtk.data import synthetic_images
    from vrtk.train.recipe import resolve
    from vrtk.train.runner import Trainer
    from vrtk.zoo import BaseSpec, build_base

    overrides = {"profile": "test", "arch_kwargs": {"N": args.N, "M": args.M}, "batch": 16, "crop": 64,
                 "synthetic": 8, "lr": 1e-4, "clip": 1.0, "threads": args.threads}
    config = resolve("pretrain", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp), [0.0035], resume=False, progress=False)
        torch.manual_seed(0)
        bare_net = build_base(BaseSpec("bmshj2018-hyperprior", weights="random",
                                       arch_kwargs={"N": args.N, "M": args.M})).train()
        bare_net.load_state_dict(trainer.net.state_dict())
        bare_step = bare_loop_factory(bare_net, 0.0035, 1e-4, 1.0)
        gen = torch.Generator().manual_seed(0)
        from vrtk.data import CropSampler

        sampler = CropSampler(synthetic_images(8, 128, 128), 64)
        batches = [sampler.sample(16, gen) for _ in range(args.block)]
        trainer.sampler.sample = lambda batch, generator, _it=iter(range(10**9)): batches[next(_it) % len(batches)]
        for _ in range(2):  # warm-up both
            trainer.train_step()
            bare_step(batches[0])
        times = {"vrtk": [], "bare": []}
        done = 0
        while done < args.steps:
            for name in ("vrtk", "bare"):
                for i in range(args.block):
                    start = time.perf_counter()
                    trainer.train_step() if name == "vrtk" else bare_step(batches[i])
                    times[name].append(time.perf_counter() - start)
            done += args.block
    vrtk_s, bare_s = statistics.median(times["vrtk"]), statistics.median(times["bare"])
    print(f"model N={args.N} M={args.M}, batch 16x64x64, {args.steps} steps each, {args.threads} threads")
    print(f"vrtk Trainer.train_step  median {vrtk_s * 1000:.1f} ms/step")
    print(f"bare PyTorch loop        median {bare_s * 1000:.1f} ms/step")
    print(f"ratio bare/vrtk = {bare_s / vrtk_s:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
