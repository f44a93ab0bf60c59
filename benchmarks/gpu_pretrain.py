"""Python steps of benchmarks/gpu_pretrain.sh (see there): check the install, measure training throughput and
plan the step count, and check the output folder against what the device tool brings back.

    python benchmarks/gpu_pretrain.py check --device cuda
    python benchmarks/gpu_pretrain.py probe --device cuda --deadline EPOCH -o probe.json -- [recipe overrides]
    python benchmarks/gpu_pretrain.py outcheck OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
from pathlib import Path

REQUIRED_PLUGINS = ("bm", "ecg", "gain")
OUT_MAX_FILES = 8  # what the device tool brings back from $OUT
OUT_MAX_BYTES = 16 * 10**6  # 16 MB per file, read as the smaller of MB and MiB
OUT_MAX_DEPTH = 3  # $OUT/a/b/file comes back, $OUT/a/b/c/file does not
OUT_NAME = re.compile(r"[A-Za-z0-9._-]+")


# -- check ------------------------------------------------------------------------------------------------------
def check(device_name: str) -> None:
    """CompressAI imports and codes a real bitstream on ``device``; vrtk and its plugins load; a wrapped tiny model
    round-trips through a .vrtk file. Raises on the first failure."""
    import compressai
    import numpy
    import timm
    import torch

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}, "
          f"timm {timm.__version__}, compressai {compressai.__version__} ({Path(compressai.__file__).parent})")
    device = torch.device(device_name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("check: --device cuda, but torch sees no CUDA device")
        print(f"cuda: {torch.cuda.get_device_name(device)}, torch built for CUDA {torch.version.cuda}")

    from compressai.zoo import bmshj2018_hyperprior

    torch.manual_seed(0)
    net = bmshj2018_hyperprior(quality=1, pretrained=False).to(device).eval()
    net.update(force=True)
    x = torch.rand(1, 3, 128, 128, device=device)
    with torch.no_grad():
        coded = net.compress(x)
        out = net.decompress(coded["strings"], coded["shape"])
        expected = net(x)["x_hat"].clamp(0, 1)  # decompress clamps
    nbytes = sum(len(s) for group in coded["strings"] for s in group)
    error = float((out["x_hat"] - expected).abs().max())
    print(f"compressai round trip on {device}: {nbytes} bytes, |decoded - forward| max {error:.2e}")
    if error > 1e-3:
        raise SystemExit("check: CompressAI's decoded image differs from its forward pass")

    import vrtk
    from vrtk.api import Coder
    from vrtk.model import wrap
    from vrtk.plugin_manager import get_registry
    from vrtk.zoo import BaseSpec

    registry = get_registry()
    plugins = ", ".join(sorted(registry.injectors))
    print(f"vrtk {vrtk.__version__} from {Path(vrtk.__file__).parent}; plugins: {plugins}")
    missing = [p for p in REQUIRED_PLUGINS if p not in registry.injectors]
    if missing or registry.load_errors:
        raise SystemExit(f"check: plugins missing {missing}, load errors {registry.load_errors}: is the vrtk wheel "
                         "installed (its entry points register them)?")
    spec = BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs={"N": 8, "M": 12})
    wrapped = wrap(spec, ["bm"], {"bm": {"lambdas": [0.0035, 0.013]}})
    wrapped.lambdas = [0.0035, 0.013]
    coder = Coder(wrapped, device=str(device))
    image = torch.rand(3, 70, 90)
    decoded = coder.decode(coder.compress(image, lmbda=0.005).data)
    if decoded.tensor.shape != image.shape:
        raise SystemExit(f"check: vrtk decoded {tuple(decoded.tensor.shape)}, expected {tuple(image.shape)}")
    print(f"vrtk .vrtk round trip on {coder.device}: ok")


# -- probe ------------------------------------------------------------------------------------------------------
def measure(config, warmup: int, steps: int) -> dict:
    """Steps per second of the recipe's training step after ``warmup`` steps (cuDNN autotuning, allocator)."""
    import torch

    from vrtk.train.runner import Trainer, lambdas_for

    if steps < 1:
        raise SystemExit("probe: --steps must be at least 1")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp), lambdas_for(config), resume=False, progress=False)
        setup_s = time.monotonic() - started
        for _ in range(warmup):
            trainer.train_step()
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.monotonic()
        for _ in range(steps):
            record = trainer.train_step()
        sync()
        elapsed = time.monotonic() - t0
    memory = torch.cuda.max_memory_allocated() / 2**30 if trainer.device.type == "cuda" else None
    return {"steps_per_s": steps / elapsed, "setup_s": round(setup_s, 2), "timed_steps": steps,
            "warmup_steps": warmup, "last_loss": record["loss"], "peak_gib": memory}


def plan_steps(steps_per_s: float, seconds_left: float, reserve_s: float, startup_s: float, train_max_s: float,
               efficiency: float = 0.95) -> tuple[int, float]:
    """Training steps that end in time: the training gets what is left after the run's own start-up and the
    ``reserve`` for what follows it, at most ``train_max_s``; ``efficiency`` covers logging and checkpoints."""
    train_s = min(train_max_s, seconds_left - reserve_s - startup_s)
    if train_s < 30:
        raise SystemExit(f"probe: {seconds_left:.0f} s left, {reserve_s:.0f} s reserved, start-up {startup_s:.0f} s: "
                         "no time to train")
    return max(1, int(steps_per_s * train_s * efficiency)), train_s


def probe(args) -> None:
    from vrtk.train.recipe import resolve

    config = resolve(args.recipe, [f"profile={args.profile}", *args.overrides])
    if config.threads:  # as `vrtk run` does
        import torch

        torch.set_num_threads(config.threads)
    results = {}
    for precision in args.precisions:
        trial = dataclasses.replace(config, precision=precision, device=args.device)
        try:
            results[precision] = measure(trial, args.warmup, args.steps)
        except Exception as exc:  # a failed variant is reported, the others still count
            results[precision] = {"error": f"{type(exc).__name__}: {exc}"}
        line = results[precision]
        print(f"probe {precision:>14}: " + (f"{line['steps_per_s']:.2f} steps/s, set-up {line['setup_s']} s"
                                           if "error" not in line else line["error"]), flush=True)
    chosen = args.precision
    if chosen == "auto":  # bf16 only when clearly faster: it is the riskier one
        rates = {p: r["steps_per_s"] for p, r in results.items() if "error" not in r}
        if not rates:
            raise SystemExit("probe: every precision failed")
        chosen = max(rates, key=lambda p: rates[p] * (1.0 if p != "bf16-autocast" else 1 / 1.15))
    if "error" in results.get(chosen, {"error": "not probed"}):
        raise SystemExit(f"probe: precision {chosen} did not run: {results.get(chosen)}")
    rate = results[chosen]["steps_per_s"]
    seconds_left = args.deadline - time.time()
    steps, train_s = plan_steps(rate, seconds_left, args.reserve, results[chosen]["setup_s"] + args.startup,
                                args.train_max)
    if args.steps_override:
        steps = args.steps_override
    warmup = min(config.warmup_steps, steps // 10)  # timm's wsd needs room for its decay after the warmup
    plan = {"recipe": args.recipe, "profile": args.profile, "overrides": args.overrides, "device": args.device,
            "precision": chosen, "steps": steps, "warmup_steps": warmup, "train_s": round(train_s, 1),
            "seconds_left": round(seconds_left, 1),
            "reserve_s": args.reserve, "steps_override": args.steps_override, "probes": results}
    Path(args.output).write_text(json.dumps(plan, indent=2) + "\n")
    print(f"plan: precision {chosen}, {steps} steps (~{steps / rate:.0f} s at {rate:.2f} steps/s; "
          f"{seconds_left:.0f} s to the deadline)" + (" [steps fixed by STEPS]" if args.steps_override else ""))


# -- outcheck ---------------------------------------------------------------------------------------------------
def outcheck(out: Path) -> None:
    """List $OUT and fail when the device tool would leave something behind (count, size, depth, names)."""
    files = sorted(p for p in out.rglob("*") if p.is_file() or p.is_symlink())
    problems = []
    for path in files:
        rel = path.relative_to(out)
        size = path.stat().st_size if path.is_file() else 0
        print(f"  {str(rel):<40} {size / 2**20:9.2f} MiB")
        if path.is_symlink() or not path.is_file():
            problems.append(f"{rel}: not a plain file")
        if size > OUT_MAX_BYTES:
            problems.append(f"{rel}: {size} bytes, over 16 MB")
        if len(rel.parts) > OUT_MAX_DEPTH:
            problems.append(f"{rel}: deeper than two folders")
        if not all(OUT_NAME.fullmatch(part) for part in rel.parts):
            problems.append(f"{rel}: a name with characters other than letters, digits, '.', '_', '-'")
    if len(files) > OUT_MAX_FILES:
        problems.append(f"{len(files)} files, at most {OUT_MAX_FILES} come back")
    print(f"  {len(files)} file(s), {sum(p.stat().st_size for p in files if p.is_file()) / 2**20:.2f} MiB")
    if problems:
        raise SystemExit("outcheck: " + "; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="CompressAI and vrtk import, plugins register, real bitstreams round-trip")
    p.add_argument("--device", default="cuda")
    p = sub.add_parser("probe", help="measure steps/s per precision and plan the step count")
    p.add_argument("--recipe", default="bm-finetune")
    p.add_argument("--profile", default="gpu")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precisions", nargs="+", default=["tf32", "bf16-autocast"], help="precisions to measure")
    p.add_argument("--precision", default="tf32", help="the one to train with, or auto (fastest; bf16 if 15%% faster)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=30, help="timed steps per precision")
    p.add_argument("--deadline", type=float, required=True, help="epoch seconds by which the whole script ends")
    p.add_argument("--reserve", type=float, default=100.0, help="seconds kept for conversion and evaluation")
    p.add_argument("--startup", type=float, default=8.0, help="seconds `vrtk run` spends importing before set-up")
    p.add_argument("--train-max", type=float, default=420.0, help="train at most this many seconds")
    p.add_argument("--steps-override", type=int, default=0, help="train this many steps whatever the plan says")
    p.add_argument("-o", "--output", required=True, help="plan JSON")
    p.add_argument("overrides", nargs="*", help="recipe overrides (key=value), after --")
    p = sub.add_parser("outcheck", help="check an output folder against the device tool's limits")
    p.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "check":
        check(args.device)
    elif args.command == "probe":
        probe(args)
    else:
        outcheck(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
