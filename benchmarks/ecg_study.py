"""Where does ECG's quality go? A controlled study at one budget (issue 15, section 2). Results: results/ecg-study/
(table.md, summary.json, one JSON per model, commands.log); the README's ECG section reads them.

    python benchmarks/ecg_study.py --list                 # the variants, what each tests, their overrides
    python benchmarks/ecg_study.py --dry-run              # every command, checked by vrtk's recipe resolver, none run
    python benchmarks/ecg_study.py --threads 1            # every variant whose result is missing
    python benchmarks/ecg_study.py --variants fixed,t0.6  # some of them
    python benchmarks/ecg_study.py --table                # the table from the results present
    python benchmarks/ecg_study.py --toy --runs /tmp/r --results /tmp/s --kodak DIR   # the code path, in seconds

Every model fine-tunes the same base (vrtk 0.1's embedded N=64/M=96 model from git history, as base_study.py
does, so the study does not move when the shipped default does) with the recipes' cpu profiles, changing only
the keys a variant names (the target-based variants pin the cpu profile's old ECG settings), at lambda 0.0035,
1 x 256^2 crops per step (the pixels of 16 x 64^2: base_study found 64^2 crops leave the hyperprior untrained),
1,200 steps per model. The reference is the ``fixed-rate`` profile trained the same way at three lambdas, so that
a gated model can be compared at matched bpp (PCHIP on the
fixed-rate curve) and at the same lambda. Variants:

* frontier: the sparsity-target loss of the cpu profile as it was before this study (TARGET_PROFILE: alpha
  calibrated to 30 % zeros, a target ramped over 800 steps) at targets 0.4-0.7, without the alpha term (``-g0``)
  and, for t0.6, with it; the paper's loss taken literally (alpha from 0 toward alpha_t = gamma = 1e-4, no
  calibration, no target); and the paper's loss form with a larger alpha_t and gamma (values not from the paper),
  since 1e-4 barely moves alpha here (``paper-at*``; 5e-3 became the cpu profile);
* per-layer ablation at target 0.6: gates only in g_a, only in g_s, only in h_a/h_s (``targets=`` regexes), and
  per-layer budgets from it (``layer_targets``: g_s at 0.3, the rest at 0.7 or 0.8);
* recovery at target 0.6, 600 + 600 steps (the same 1,200): sparsify, then hold the gates (ECG's
  ``freeze_gates``, written into a copy of the first model's config: ``train=`` always trains plugin modules, and a
  loaded model keeps its recorded plugin config) and fine-tune the whole base, or only the decoder (``train=``);
  and target 0.6 with distillation from the dense base it starts from (``distill=1``, plus ``distill_latent=1``:
  vrtk/train/distill.py);
* baseline at equal MACs: static pruning of the same base (``static_prune.py``: every link keeps the channels with
  the largest filter norms, as many as give t0.6's MACs), then the fixed-rate profile for the same 1,200 steps.

Results: ``<results>/<variant>.json`` (vrtk eval, real bitstreams on Kodak), ``summary.json`` and ``table.md``
(PSNR drop at matched bpp, same-lambda bpp and PSNR change, mean sparsity, gated-layer and whole-codec MAC
reduction, from vrtk's own report code). Models go to ``--runs`` (a cache folder, not git); every command is
appended to ``<results>/commands.log``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from base_study import chosen_variants, study_base  # noqa: E402
from reproduce import DATA, run_command  # noqa: E402

from vrtk.fileio import write_text_atomic  # noqa: E402

LAMBDA = 0.0035
REFERENCE_LAMBDAS = (0.0018, 0.0035, 0.0067)
STEPS = 1200
CROP = ["crop=256", "batch=1"]
STUDY_SIZES, TOY_SIZES = {"N": 64, "M": 96}, {"N": 8, "M": 12}
TOY_MODEL = ["model=bmshj2018-hyperprior", "weights=random", "arch_kwargs={N: 8, M: 12}"]
TOY_SCHEDULE = ["synthetic=4", "crop=64", "batch=2", "steps=8", "log_every=2", "ckpt_every=4"]  # wsd needs steps
ECG = "plugin_config.ecg."
PAPER = [f"{ECG}init_sparsity=null", f"{ECG}sparsity_target=0", f"{ECG}eps_relative=false", f"{ECG}alpha_init=0",
         f"{ECG}alpha_reduction=mean", f"{ECG}alpha_t=1e-4", f"{ECG}gamma=1e-4"]
REFERENCE_GROUP = "fixed-rate (256^2 crops)"
# The ECG settings of the ecg-finetune cpu profile before this study (the target-based variants build on them; the
# profile now ships the paper's loss form with alpha_t 5e-3, the study's paper-at5e-3)
TARGET_PROFILE = [f"{ECG}init_sparsity=0.3", f"{ECG}sparsity_ramp=800", f"{ECG}sparsity_weight=1.0",
                  f"{ECG}eps_relative=true", f"{ECG}alpha_init=1e-4", f"{ECG}alpha_reduction=sum"]


@dataclass
class Variant:
    """One trained model: ``overrides`` of the recipe's cpu profile; with ``recover`` the second stage's ``train=``
    (the first stage sparsifies for half the steps, the second holds the gates for the other half)."""

    group: str
    what: str
    overrides: list[str] = field(default_factory=list)
    recover: str | None = None
    prune_like: str | None = None  # static pruning of the base to this variant's MACs, then fixed-rate fine-tuning


def target(value: float, *extra: str, alpha_term: bool = False) -> list[str]:
    """The cpu profile's sparsity-target loss at ``value``, without the paper's alpha term (gamma=0, as the profile
    now has it) unless asked (gamma=1e-4, as the profile had it before this study):
    the profile calibrates alpha to each channel's energy (init_sparsity), and the term then pulls it toward
    alpha_t = 1e-4 in absolute units -- on the study base up to 1.5e10 of loss, whose gradient takes over the
    global gradient-norm clipping and so shrinks every other gradient (variant t0.6)."""
    return [*TARGET_PROFILE, f"{ECG}sparsity_target={value}", f"{ECG}gamma={1e-4 if alpha_term else 0}", *extra]


HALF = [f"steps={STEPS // 2}", f"{ECG}sparsity_ramp={STEPS // 3}"]
G_A, G_S, HYPER = f"{ECG}targets=['g_a\\.[246]']", f"{ECG}targets=['g_s\\.[246]']", f"{ECG}targets=['h_[as]\\.[24]']"
VARIANTS = {
    "fixed": Variant("reference", f"fixed-rate profile, lambdas {', '.join(map(str, REFERENCE_LAMBDAS))}"),
    "t0.6": Variant("frontier", "sparsity target 0.6: the cpu profile as is (with the alpha term)",
                    target(0.6, alpha_term=True)),
    "static-t0.6": Variant("baseline", "static pruning (filter norms) of the base to t0.6's MACs, then the "
                           "fixed-rate profile with train=all", prune_like="t0.6"),
    "t0.6-g0": Variant("frontier", "sparsity target 0.6 without the alpha term (gamma=0)", target(0.6)),
    "t0.5-g0": Variant("frontier", "sparsity target 0.5, gamma=0", target(0.5)),
    "t0.7-g0": Variant("frontier", "sparsity target 0.7, gamma=0", target(0.7)),
    "t0.4-g0": Variant("frontier", "sparsity target 0.4, gamma=0", target(0.4)),
    "distill-t0.6-g0": Variant("recovery", "t0.6-g0 with distillation from the dense base (reconstruction term)",
                               target(0.6, "distill=1")),
    "distill-y-t0.6-g0": Variant("recovery", "t0.6-g0 with distillation of the reconstruction and the latent y",
                                 target(0.6, "distill=1", "distill_latent=1")),
    "only-g_a-g0": Variant("ablation", "gates only in g_a (t0.6-g0)", target(0.6, G_A)),
    "only-g_s-g0": Variant("ablation", "gates only in g_s (t0.6-g0)", target(0.6, G_S)),
    "only-hyper-g0": Variant("ablation", "gates only in h_a and h_s (t0.6-g0)", target(0.6, HYPER)),
    "budget-0.7-s0.3-g0": Variant("budget", "per-layer budgets from the ablation: target 0.7, g_s only 0.3 "
                                  "(layer_targets)", target(0.7, f"{ECG}layer_targets={{'g_s\\..*': 0.3}}")),
    "budget-0.8-s0.3-g0": Variant("budget", "target 0.8, g_s only 0.3", target(0.8, f"{ECG}layer_targets="
                                                                           f"{{'g_s\\..*': 0.3}}")),
    "recover-t0.6-g0": Variant("recovery", "600 steps of t0.6-g0, then 600 with the gates held, whole base trains",
                               target(0.6, *HALF), recover="all"),
    "recover-t0.6-dec-g0": Variant("recovery", "as recover-t0.6-g0, but only the decoder trains in the second half",
                                   target(0.6, *HALF), recover="g_s\\..*"),
    "paper": Variant("frontier", "the paper's loss and values: alpha 0 -> alpha_t = gamma = 1e-4", PAPER),
    "paper-at1e-3": Variant("frontier", "the paper's loss form, alpha_t 1e-3, gamma 1 (not the paper's values)",
                            [*PAPER, f"{ECG}alpha_t=1e-3", f"{ECG}gamma=1.0"]),
    "paper-at3e-3": Variant("frontier", "the paper's loss form, alpha_t 3e-3, gamma 1 (not the paper's values)",
                            [*PAPER, f"{ECG}alpha_t=3e-3", f"{ECG}gamma=1.0"]),
    "paper-at5e-3": Variant("frontier", "the paper's loss form, alpha_t 5e-3, gamma 1 (not the paper's values)",
                            [*PAPER, f"{ECG}alpha_t=5e-3", f"{ECG}gamma=1.0"]),
    "paper-at2e-2": Variant("frontier", "the paper's loss form, alpha_t 2e-2, gamma 1 (not the paper's values)",
                            [*PAPER, f"{ECG}alpha_t=2e-2", f"{ECG}gamma=1.0"]),
    "paper-at1e-2": Variant("frontier", "the paper's loss form, alpha_t 1e-2, gamma 1 (not the paper's values)",
                            [*PAPER, f"{ECG}alpha_t=1e-2", f"{ECG}gamma=1.0"]),
}


def freeze_copy(source: Path, dest: Path) -> None:
    """Copy a model folder and record ``freeze_gates: true`` in its ECG config (what the recovery stage loads)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest)
    config = json.loads((dest / "config.json").read_text())
    ecg = [p for p in config["plugins"] if p["name"] == "ecg"]
    if not ecg:
        raise SystemExit(f"{source}: no ECG plugin to hold")
    ecg[0]["config"]["freeze_gates"] = True
    write_text_atomic(dest / "config.json", json.dumps(config, indent=2) + "\n")


@dataclass
class Setup:
    """Where things go and what every training command shares."""

    runs: Path
    results: Path
    kodak: Path
    threads: int
    toy: bool = False
    dry_run: bool = False

    def base(self) -> list[str]:
        """The study's base model (the toy run brings its own); a dry run names the file without writing it."""
        if self.toy:
            return []
        weights = self.runs / "base-v0.1.safetensors" if self.dry_run else study_base(self.runs)
        return ["model=bmshj2018-hyperprior", f"weights={weights}", "arch_kwargs={N: 64, M: 96}"]

    def base_cli(self) -> list[str]:
        """The study base as ``vrtk``-style command-line arguments (MODEL --weights W --arch-kwargs JSON)."""
        weights = "random" if self.toy else str(self.runs / "base-v0.1.safetensors" if self.dry_run
                                                 else study_base(self.runs))
        sizes = TOY_SIZES if self.toy else STUDY_SIZES
        return ["bmshj2018-hyperprior", "--weights", weights, "--arch-kwargs", json.dumps(sizes)]

    def train(self, recipe: str, out: Path, *overrides: str, from_folder: bool = False) -> list[str]:
        shared = [f"out={out}", f"threads={self.threads}", f"data={DATA / 'photos-train'}", *CROP]
        toy = [*TOY_SCHEDULE, *([] if from_folder else TOY_MODEL)] if self.toy else []
        return ["vrtk", "run", recipe, "profile=cpu", *shared, *overrides, *toy,
                "--no-progress"]

    def evaluate(self, model: Path, name: str, *extra: str) -> list[str]:
        return ["vrtk", "eval", str(model), "--data", str(self.kodak), "-o", str(self.results / f"{name}.json"),
                "--threads", str(self.threads), "--no-progress", "--repeats", "1", "--metrics", "psnr",
                *extra]  # the study needs rate, quality and MACs, not timings


def reference_commands(setup: Setup) -> list[list[str]]:
    out = setup.runs / "fixed"
    lambdas = ", ".join(map(str, REFERENCE_LAMBDAS))
    train = setup.train("fixed-rate", out, *setup.base(), f"lambdas=[{lambdas}]")
    evals = [setup.evaluate(out / f"lambda-{lam:g}" / "model", f"fixed-{lam:g}", "--name", REFERENCE_GROUP,
                            "--group", REFERENCE_GROUP) for lam in REFERENCE_LAMBDAS]
    return [train, *evals]


def variant_commands(name: str, setup: Setup) -> list[list[str]]:
    """Training (one or two stages) and evaluation of one variant."""
    if name == "fixed":
        return reference_commands(setup)
    variant = VARIANTS[name]
    out = setup.runs / name
    if variant.prune_like is not None:
        return static_commands(name, variant.prune_like, setup)
    first = setup.train("ecg-finetune", out, *setup.base(), f"lambdas=[{LAMBDA}]", *variant.overrides)
    if variant.recover is None:
        return [first, setup.evaluate(out / "model", name, "--name", name)]
    held, second = setup.runs / f"{name}-held", setup.runs / f"{name}-recovered"
    copy = [sys.executable, str(Path(__file__).resolve()), "--freeze-copy", str(out / "model"), str(held)]
    recover = setup.train("ecg-finetune", second, f"model={held}", f"lambdas=[{LAMBDA}]", f"steps={STEPS // 2}",
                          f"train={variant.recover}", from_folder=True)
    return [first, copy, recover, setup.evaluate(second / "model", name, "--name", name)]


def static_commands(name: str, like: str, setup: Setup) -> list[list[str]]:
    """Prune the study base to the MACs of variant ``like`` (its results must exist), fine-tune, evaluate."""
    start, out = setup.runs / f"{name}-start", setup.runs / name
    prune = [sys.executable, str(Path(__file__).resolve().parent / "static_prune.py"), *setup.base_cli(),
             "--match", str(setup.results / f"{like}.json"), "-o", str(start)]
    train = setup.train("fixed-rate", out, f"model={start}", f"lambdas=[{LAMBDA}]", from_folder=True)
    model = out / f"lambda-{LAMBDA:g}" / "model"
    return [prune, train, setup.evaluate(model, name, "--name", name)]


def done_marker(name: str, results: Path) -> Path:
    last = f"fixed-{REFERENCE_LAMBDAS[-1]:g}" if name == "fixed" else name
    return results / f"{last}.json"


def check_training_command(cmd: list[str]) -> str:
    """Resolve a ``vrtk run`` command's overrides as vrtk will (unknown keys, bad YAML fail here, not in an hour);
    returns the ECG config it trains with, or '' for other recipes."""
    from vrtk.plugin_manager import get_registry
    from vrtk.train.recipe import resolve

    overrides = [a for a in cmd[3:] if not a.startswith("--")]
    config = resolve(cmd[2], overrides)
    ecg = config.plugin_config.get("ecg")
    if "ecg" not in config.plugins or ecg is None:
        return ""
    if config.model.endswith("-held"):
        return f"  # ecg: the config recorded in {config.model}, with freeze_gates: true"
    made = get_registry().injector("ecg").make_config(ecg)
    defaults = type(made)()
    changed = {k: v for k, v in vars(made).items() if getattr(defaults, k) != v}
    return f"  # ecg beyond the defaults: {changed or 'none (the paper)'}"


def table(results: Path, reference_group: str = REFERENCE_GROUP, gated_only: bool = False) -> tuple[str, list[dict]]:
    """Rows of vrtk's Compute table for the variants present (with ``gated_only``, the gated ones), against the
    fixed-rate reference curve (the study's group by default; ``benchmarks/reproduce.py`` names its set
    ``fixed-rate``)."""
    from vrtk.eval.report import find_curve, flops_table, load_curves

    files = [str(p) for p in sorted(results.glob("*.json")) if p.name != "summary.json"]
    if not files:
        return "no results yet", []
    curves = load_curves(files)
    try:
        reference = find_curve(curves, reference_group)
    except Exception:
        reference = None
    rows = [r for r in flops_table(curves, reference) if (reference is None or r["curve"] != reference.label)
            and (not gated_only or r["mean_sparsity"] is not None)]

    def cell(value, spec):
        return format(value, spec) if value is not None else "-"

    lines = [f"{'variant':<18} {'bpp':>7} {'PSNR':>6} {'drop%':>6} {'same-l bpp%':>11} {'same-l dB':>9} "
             f"{'sparsity':>8} {'gated x':>7} {'codec x':>7}"]
    for r in rows:
        lines.append(f"{r['curve']:<18} {r['bpp']:7.4f} {cell(r['psnr'], '6.2f')} "
                     f"{cell(r['psnr_drop_percent'], '+6.2f')} {cell(r['same_lambda_bpp_change_percent'], '+11.1f')} "
                     f"{cell(r['same_lambda_psnr_change_db'], '+9.2f')} {cell(r['mean_sparsity'], '8.3f')} "
                     f"{cell(r['gated_reduction'], '7.2f')} {cell(r['reduction_vs_baseline'], '7.2f')}")
    return "\n".join(lines), rows


def write_table(results: Path) -> str:
    text, rows = table(results)
    if rows:
        write_text_atomic(results / "summary.json", json.dumps(rows, indent=2) + "\n")
        write_text_atomic(results / "table.md", "```\n" + text + "\n```\n")
    return text


def run_variant(name: str, setup: Setup, dry_run: bool) -> bool:
    for cmd in variant_commands(name, setup):
        training = cmd[:2] == ["vrtk", "run"]
        if training and not dry_run:
            out = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("out=")))
            if (out / "config.yaml").exists():
                cmd = [*cmd, "--resume"]
        if not run_command(cmd, setup.results, dry_run=dry_run):
            print(f"variant {name} failed: {shlex.join(cmd)}", file=sys.stderr)
            return False
        if training and dry_run:
            print(check_training_command(cmd) or "  # (no ECG)")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(Path.home() / ".cache" / "vrtk" / "runs" / "ecg-study"))
    parser.add_argument("--results", default="results/ecg-study")
    parser.add_argument("--kodak", default=str(DATA / "kodak"))
    parser.add_argument("--variants", default="", help="comma-separated names (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print and check every command, run none")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--toy", action="store_true", help="tiny random model, 8 steps: exercises the code path")
    parser.add_argument("--freeze-copy", nargs=2, metavar=("MODEL", "COPY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.freeze_copy:
        freeze_copy(Path(args.freeze_copy[0]), Path(args.freeze_copy[1]))
        return 0
    wanted = chosen_variants(args.variants, VARIANTS)
    if wanted is None:
        return 2
    if args.list:
        for name in wanted:
            v = VARIANTS[name]
            print(f"{name:<18} {v.group:<10} {v.what}: {' '.join(v.overrides) or '(profile as is)'}"
                  + (f"; then train={v.recover}" if v.recover else ""))
        return 0
    setup = Setup(Path(args.runs), Path(args.results), Path(args.kodak), args.threads, toy=args.toy,
                  dry_run=args.dry_run)
    if not args.dry_run:
        setup.results.mkdir(parents=True, exist_ok=True)
    if not args.table:
        for name in wanted:
            if done_marker(name, setup.results).exists() and not args.dry_run:
                continue
            if not run_variant(name, setup, args.dry_run):
                return 1
    if not args.dry_run:
        print(write_table(setup.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
