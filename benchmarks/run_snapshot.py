"""A model folder from a training run's resume checkpoint (``last.pt``), with the base named by its architecture.

    python benchmarks/run_snapshot.py ~/.cache/vrtk/runs/bm-base -o /tmp/bm-snapshot

Used to make the embedded ``default`` (README, "The embedded default models"): its run was trained from the
previous embedded base, which vrtk no longer ships, so the run's own ``model/`` folder (a delta over that base)
cannot be loaded any more; ``last.pt`` holds every tensor, and the architecture and sizes are read from it.
Also handy to evaluate a long run before it ends.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from vrtk.model import save_model, wrap
from vrtk.zoo import BaseSpec, get_arch, guess_arch, infer_sizes


def snapshot(run_dir: Path, out: Path) -> Path:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    tensors = state["model"]
    plain = {k: v for k, v in tensors.items() if not any(p in k for p in (".1.hidden", ".1.out", ".0.hidden",
                                                                          ".0.out"))}
    base_keys = {k.replace("g_a.0.", "g_a.").replace("g_s.1.", "g_s."): v for k, v in plain.items()}
    arch = guess_arch(base_keys)
    if arch is None:
        raise SystemExit(f"{run_dir}: cannot tell the base architecture from last.pt")
    sizes = infer_sizes(get_arch(arch), base_keys)
    lambdas = sorted(float(x) for x in config["lambdas"])
    configs = {name: {**(config.get("plugin_config") or {}).get(name, {}), "lambdas": lambdas}
               for name in config["plugins"]}
    wrapped = wrap(BaseSpec(arch=arch, arch_kwargs=sizes, weights="random"), list(config["plugins"]), configs)
    wrapped.net.load_state_dict(tensors)
    wrapped.lambdas = lambdas
    wrapped.metric = config.get("distortion", "mse")
    wrapped.extra["training"] = {"recipe": config["recipe"], "profile": config["profile"], "steps": state["step"],
                                 "lambdas": lambdas}
    wrapped.net.update(force=True)
    return save_model(wrapped.to("cpu"), out, full=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    print(f"model folder written: {snapshot(args.run_dir, args.output)}")


if __name__ == "__main__":
    main()
