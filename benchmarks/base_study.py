"""Which training recipe makes the best base on 2 CPU cores? A study at one budget, on Kodak with real bitstreams.

    python benchmarks/base_study.py --threads 1               # every variant whose result is missing
    python benchmarks/base_study.py --list                    # the variants and their overrides
    python benchmarks/base_study.py --table                   # the table from the results present

Every variant fine-tunes vrtk 0.1's embedded base (N=64/M=96, from git history) at lambda 0.0035 with the
``fixed-rate`` cpu profile for the same number of steps, changing only the keys it names. Equal pixels per step:
16 x 64^2 = 1 x 256^2 = 4 x 128^2. Each result is one RD point, so the table gives single-point equivalents
against JPEG and WebP (their PSNR at the model's bpp by PCHIP in log-rate, as BD-rate interpolates). Models go to
``--runs`` (a cache folder outside git); results JSON to ``--results`` (committed); commands to
``<results>/commands.log``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import DATA, run_command  # noqa: E402

from vrtk.fileio import write_bytes_atomic  # noqa: E402

BASE_REVISION = "732e200"  # the last commit that shipped the v0.1 embedded base
BOTH = f"{DATA / 'photos-train'},{DATA / 'photos-train-2'}"
STEPS = 2400
# name -> (what it tests, overrides of the fixed-rate cpu profile)
VARIANTS = {
    "crop64": ("16 x 64^2 crops, photos-train (the old recipe)", []),
    "crop128": ("4 x 128^2 crops, photos-train", ["crop=128", "batch=4"]),
    "crop256": ("1 x 256^2 crops, photos-train", ["crop=256", "batch=1"]),
    "crop256-both": ("1 x 256^2, photos-train + photos-train-2", ["crop=256", "batch=1", f"data={BOTH}"]),
    "crop256-both-lr1e-3": ("as crop256-both, lr 1e-3", ["crop=256", "batch=1", f"data={BOTH}", "lr=1e-3"]),
    "crop256x2-both-half": ("2 x 256^2 at half the steps (same pixels)",
                            ["crop=256", "batch=2", f"data={BOTH}", f"steps={STEPS // 2}"]),
}


def study_base(runs: Path) -> Path:
    """The base every variant starts from: the embedded base of vrtk 0.1 (N=64/M=96, 64^2 crops, lambda 0.0035),
    taken from git history so the study does not move when the shipped default does."""
    path = runs / "base-v0.1.safetensors"
    if not path.exists():
        runs.mkdir(parents=True, exist_ok=True)
        blob = subprocess.run(["git", "show", f"{BASE_REVISION}:vrtk/assets/default.safetensors"], check=True,
                              capture_output=True, cwd=Path(__file__).resolve().parents[1]).stdout
        write_bytes_atomic(path, blob)
    return path


def commands(name: str, extra: list[str], runs: Path, results: Path, kodak: Path, threads: int) -> list[list[str]]:
    out_dir = runs / name
    train = ["vrtk", "run", "fixed-rate", "profile=cpu", f"out={out_dir}", "model=bmshj2018-hyperprior",
             f"weights={study_base(runs)}", "arch_kwargs={N: 64, M: 96}", "lambdas=[0.0035]", f"steps={STEPS}",
             f"threads={threads}", f"data={DATA / 'photos-train'}", *extra, "--no-progress"]
    evaluate = ["vrtk", "eval", str(out_dir / "lambda-0.0035" / "model"), "--data", str(kodak), "-o",
                str(results / f"{name}.json"), "--threads", str(threads), "--name", name, "--no-progress"]
    return [train, evaluate]


def _curve(anchor: dict) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(anchor["bpp"])
    return np.log(np.asarray(anchor["bpp"])[order]), np.asarray(anchor["psnr-rgb"])[order]


def psnr_at(anchor: dict, bpp: float) -> float:
    """The anchor's PSNR at ``bpp`` (PCHIP in log-rate); NaN outside its range."""
    rate, psnr = _curve(anchor)
    inside = rate[0] <= np.log(bpp) <= rate[-1]
    return float(PchipInterpolator(rate, psnr)(np.log(bpp))) if inside else float("nan")


def bpp_at(anchor: dict, quality: float) -> float:
    """The anchor's bpp at PSNR ``quality`` (PCHIP of log-rate over PSNR); NaN outside its range."""
    rate, psnr = _curve(anchor)
    inside = psnr[0] <= quality <= psnr[-1]
    return float(np.exp(PchipInterpolator(psnr, rate)(quality))) if inside else float("nan")


def table(results: Path, anchors: Path) -> str:
    curves = {name: json.loads((anchors / f"{name}.json").read_text())["results"] for name in ("jpeg", "webp")}
    lines = [f"{'variant':<22} {'bpp':>7} {'PSNR':>7} {'dB vs':>7} {'dB vs':>7} {'rate vs':>8} {'rate vs':>8}  what",
             f"{'':<22} {'':>7} {'':>7} {'JPEG':>7} {'WebP':>7} {'JPEG':>8} {'WebP':>8}"]
    for name, (what, _) in VARIANTS.items():
        path = results / f"{name}.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())["results"]
        bpp, psnr = res["bpp"][0], res["psnr-rgb"][0]
        gains = [f"{psnr - psnr_at(curves[c], bpp):+7.2f}" for c in curves]
        rates = [f"{100 * (bpp / bpp_at(curves[c], psnr) - 1):+7.1f}%" for c in curves]
        lines.append(f"{name:<22} {bpp:7.4f} {psnr:7.2f} {' '.join(gains)} {' '.join(rates)}  {what}")
    lines.append("dB vs: PSNR minus the anchor's at the same bpp; rate vs: bpp against the anchor's at the same PSNR "
                 "(negative = fewer bits); nan = outside the anchor's measured range")
    return "\n".join(lines)


def chosen_variants(text: str, known) -> list[str] | None:
    """The comma-separated names of ``--variants`` (all when empty); None, after saying so, for an unknown one."""
    wanted = [v for v in text.split(",") if v] or list(known)
    unknown = set(wanted) - set(known)
    if unknown:
        print(f"unknown variants: {sorted(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return None
    return wanted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(Path.home() / ".cache" / "vrtk" / "runs" / "base-study"))
    parser.add_argument("--results", default="results/base-study")
    parser.add_argument("--anchors", default="results/kodak", help="folder with jpeg.json and webp.json")
    parser.add_argument("--kodak", default=str(DATA / "kodak"))
    parser.add_argument("--variants", default="", help="comma-separated names (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    runs, results = Path(args.runs), Path(args.results)
    wanted = chosen_variants(args.variants, VARIANTS)
    if wanted is None:
        return 2
    if args.list:
        for name in wanted:
            print(f"{name:<22} {VARIANTS[name][0]}: {' '.join(VARIANTS[name][1]) or '(profile as is)'}")
        return 0
    results.mkdir(parents=True, exist_ok=True)
    if not args.table:
        for name in wanted:
            if (results / f"{name}.json").exists():
                continue
            for cmd in commands(name, VARIANTS[name][1], runs, results, Path(args.kodak), args.threads):
                if cmd[1] == "run" and (runs / name / "config.yaml").exists():
                    cmd = [*cmd, "--resume"]
                if not run_command(cmd, results, dry_run=False):
                    print(f"variant {name} failed", file=sys.stderr)
                    return 1
    print(table(results, Path(args.anchors)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
