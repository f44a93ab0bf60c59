"""Reproduce the paper's experiments at CPU scale: train every model, evaluate on Kodak, build the report.

    python benchmarks/reproduce.py                      # every stage not done yet, in order
    python benchmarks/reproduce.py --stages anchors,fixed-rate,bm --dry-run
    python benchmarks/reproduce.py --list

Stages are resumable and idempotent, make-style: an evaluation whose JSON exists is skipped; a training stage runs
only when its model folder is missing and a stage that will run reads it (or it is named in ``--stages``), and an
interrupted one is continued with ``--resume``. So on a fresh clone, where the results are committed and the
models are not, nothing is retrained unless a result is deleted or a stage is named. Models go to ``--runs`` (a
cache folder, not git); results (JSON, report) to ``--results`` (committed). Training uses photos-train, evaluation
all 24 Kodak images. Every command run is printed and appended to ``<results>/commands.log``.

How far is a retrained result from the committed one? Training is deterministic on one machine (same seed,
threads=1) but not across machines (float summation order differs between CPUs and builds), so a rerun elsewhere
lands near, not on, the committed numbers. When an evaluation regenerates a JSON that git has committed (or, for
results written outside the repository, one whose name the committed ``results/kodak-v0.8/paper-cpu`` has), the
difference is printed right after it; ``--compare DIR`` compares every results JSON in ``--results`` with the one
of the same name in DIR (and runs nothing)::

    python benchmarks/reproduce.py --results /tmp/fresh --stages ecg-0.0035,ecg-0.0035-eval
    python benchmarks/reproduce.py --results /tmp/fresh --compare results/kodak-v0.8/paper-cpu
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

from vrtk.fileio import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
ECG_LAMBDAS = (0.0018, 0.0035, 0.0130)
FIXED_LAMBDAS = ("0.0018", "0.0035", "0.0067", "0.013", "0.025")
# the results (JSON stems) the report is built from
REPORT_INPUTS = ("jpeg", "webp", "default", *[f"fixed-{lam}" for lam in FIXED_LAMBDAS], "bm", "bm-fp16", "gain",
                 *[f"ecg-{lam:g}" for lam in ECG_LAMBDAS], "ecg-long", "ecg-t50", "ecg-tile16", "ecg-channel",
                 "ecg-channel-t75", "ecg-bm")
ECG_REPORT_INPUTS = (*[f"ecg-{lam:g}" for lam in ECG_LAMBDAS], "ecg-bm", "bm",
                     *[f"fixed-{lam}" for lam in FIXED_LAMBDAS])
KNOB_SPEED_SCALES = ("2", "4")
REFERENCES = ("compressai-bmshj2018-hyperprior_mse_cuda.json", "bmshj2018-hyperprior-vbr-ans.json")
COMMITTED_RESULTS = "results/kodak-v0.8/paper-cpu"  # what results written outside the repository are compared with


def stages(runs: Path, results: Path, kodak: Path, train: Path | str, threads: int = 2, overrides: tuple = ()
           ) -> list[tuple[str, list[list[str] | tuple[list[str], Path]], Path]]:
    """(name, commands, output that marks it done) in dependency order. A command given as (argv, file) has its
    standard output saved to that file too (benchmarks that print their measurements). ``overrides`` (key=value)
    go to every training run after the stage's own settings."""
    def run(recipe: str, name: str, *extra: str) -> list[str]:
        return ["vrtk", "run", recipe, "profile=cpu", f"out={runs / name}", f"data={train}", f"threads={threads}",
                *extra, *overrides, "--no-progress"]  # overrides before options: no positionals after them

    def evaluate(model: Path | str, out: str, *extra: str) -> list[str]:
        return ["vrtk", "eval", str(model), "--data", str(kodak), "-o", str(results / out), "--threads", str(threads),
                "--no-progress", *extra]

    def present(stems) -> list[str]:
        return [str(results / f"{n}.json") for n in stems if (results / f"{n}.json").exists()]

    def bench(script: str, *extra: str) -> list[str]:
        return [sys.executable, str(REPO / "benchmarks" / script), "--data", str(kodak), "--threads", str(threads),
                *extra]

    fixed, fixed_lambdas = runs / "fixed-rate", FIXED_LAMBDAS
    ecg_mid = runs / "ecg-0.0035" / "model"
    tiled = runs / "ecg-tile16-0.0035" / "model"
    channel = runs / "ecg-channel-0.0035" / "model"
    channel75 = runs / "ecg-channel-0.0035-t75" / "model"
    long_run = runs / "ecg-0.0035-long" / "model"
    target50 = runs / "ecg-0.0035-t50" / "model"
    out = [
        ("anchors", [["vrtk", "eval", "--codec", c, "--data", str(kodak), "-o", str(results / f"{c}.json"),
                      "--no-progress"] for c in ("jpeg", "webp")], results / "webp.json"),
        ("default", [evaluate("default", "default.json", "--n-points", "16", "--name", "default")],
         results / "default.json"),
        ("fixed-rate", [run("fixed-rate", "fixed-rate")], fixed / f"lambda-{fixed_lambdas[-1]}" / "model"),
        ("fixed-rate-eval", [evaluate(fixed / f"lambda-{lam}" / "model", f"fixed-{lam}.json", "--group", "fixed-rate")
                             for lam in fixed_lambdas], results / f"fixed-{fixed_lambdas[-1]}.json"),
        ("bm", [run("bm-finetune", "bm")], runs / "bm" / "model"),
        ("bm-eval", [evaluate(runs / "bm" / "model", "bm.json", "--n-points", "16", "--name", "bm")],
         results / "bm.json"),
        ("bm-fp16", [["vrtk", "convert", str(runs / "bm" / "model"), "-o", str(runs / "bm-fp16"), "--half"]],
         runs / "bm-fp16" / "config.json"),
        ("bm-fp16-eval", [evaluate(runs / "bm-fp16", "bm-fp16.json", "--n-points", "16", "--name",
                                   "bm (fp16 parameters)", "--no-macs")], results / "bm-fp16.json"),
        ("gain", [run("gain-finetune", "gain")], runs / "gain" / "model"),
        ("gain-eval", [evaluate(runs / "gain" / "model", "gain.json", "--n-points", "16", "--name", "gain")],
         results / "gain.json"),
    ]
    for lam in ECG_LAMBDAS:
        out.append((f"ecg-{lam:g}", [run("ecg-finetune", f"ecg-{lam:g}", f"lambdas=[{lam}]")],
                    runs / f"ecg-{lam:g}" / "model"))
        out.append((f"ecg-{lam:g}-eval", [evaluate(runs / f"ecg-{lam:g}" / "model", f"ecg-{lam:g}.json",
                                                    "--group", "ecg")], results / f"ecg-{lam:g}.json"))
    out += [
        ("ecg-tile16", [run("ecg-finetune", "ecg-tile16-0.0035", "lambdas=[0.0035]", "plugin_config.ecg.gate_tile=16")],
         tiled),
        ("ecg-tile16-eval", [evaluate(tiled, "ecg-tile16.json", "--name", "ecg (16x16 tiles)")],
         results / "ecg-tile16.json"),
        ("ecg-channel", [run("ecg-finetune", "ecg-channel-0.0035", "lambdas=[0.0035]",
                             "plugin_config.ecg.gate_tile=-1")], channel),
        ("ecg-channel-eval", [evaluate(channel, "ecg-channel.json", "--name", "ecg (whole channels)")],
         results / "ecg-channel.json"),
        # beyond the fixed budget: does ECG's quality gap close with 3x the steps, or with a lower sparsity target?
        ("ecg-long", [run("ecg-finetune", "ecg-0.0035-long", "lambdas=[0.0035]", "steps=3600",
                          "plugin_config.ecg.sparsity_ramp=2400")], long_run),
        ("ecg-long-eval", [evaluate(long_run, "ecg-long.json", "--name", "ecg (3x steps)")],
         results / "ecg-long.json"),
        ("ecg-t50", [run("ecg-finetune", "ecg-0.0035-t50", "lambdas=[0.0035]",
                         "plugin_config.ecg.sparsity_target=0.5")], target50),
        ("ecg-t50-eval", [evaluate(target50, "ecg-t50.json", "--name", "ecg (target 0.5)")],
         results / "ecg-t50.json"),
        # wall-clock needs whole channels skipped: how far does a higher sparsity target take decode time?
        ("ecg-channel-t75", [run("ecg-finetune", "ecg-channel-0.0035-t75", "lambdas=[0.0035]",
                                 "plugin_config.ecg.gate_tile=-1", "plugin_config.ecg.sparsity_target=0.75")],
         channel75),
        ("ecg-channel-t75-eval", [evaluate(channel75, "ecg-channel-t75.json", "--name",
                                           "ecg (whole channels, target 0.75)")], results / "ecg-channel-t75.json"),
        # wall-clock, dense vs gated side by side, in both memory layouts (channels-last runs the transposed
        # convolutions 2-4x faster on CPU, so it is the fairer dense baseline)
        ("ecg-speed", [(bench("ecg_speed.py", "--model", str(model), "--repeats", "3", *layout),
                        results / f"speed-{name}{suffix}.txt")
                       for model, name in ((ecg_mid, "ecg"), (tiled, "ecg-tile16"), (channel, "ecg-channel"),
                                           (channel75, "ecg-channel-t75"))
                       for layout, suffix in ((("--images", "8"), "-nchw"), (("--channels-last",), ""))],
         results / "speed-ecg-channel-t75.txt"),
        # the compute knob turned up at inference on the whole-channel model: how far does decode time fall?
        ("ecg-knob-speed", [(bench("ecg_speed.py", "--model", str(channel), "--repeats", "3", "--channels-last",
                                   "--scale", scale), results / f"speed-ecg-channel-scale{scale}.txt")
                            for scale in KNOB_SPEED_SCALES],
         results / f"speed-ecg-channel-scale{KNOB_SPEED_SCALES[-1]}.txt"),
        # the ceiling: the gated layers' share of dense decode time
        ("decode-split", [([sys.executable, str(REPO / "benchmarks" / "decode_split.py"), str(channel), "--data",
                            str(kodak), "--threads", str(threads)], results / "decode-split.txt")],
         results / "decode-split.txt"),
        # the knob on the element-gate model; its like-for-like reference is fixed-0.0035.json (same budget, no ECG)
        ("ecg-knob", [(bench("ecg_knob.py", str(ecg_mid)), results / "knob-ecg.txt")], results / "knob-ecg.txt"),
        ("ecg-bm", [run("ecg-bm-finetune", "ecg-bm", f"model={ecg_mid}")],
         runs / "ecg-bm" / "model"),
        ("ecg-bm-eval", [evaluate(runs / "ecg-bm" / "model", "ecg-bm.json", "--n-points", "16", "--name", "ecg+bm")],
         results / "ecg-bm.json"),
        # issue 15's controlled study (its own base, budget and reference; benchmarks/ecg_study.py): hours of
        # training, so like every training stage it runs only when named (--stages ecg-study); resumable per variant
        ("ecg-study", [[sys.executable, str(REPO / "benchmarks" / "ecg_study.py"), "--runs", str(runs / "ecg-study"),
                        "--results", str(results / "ecg-study"), "--kodak", str(kodak), "--threads", str(threads)]],
         results / "ecg-study" / "table.md"),
        ("report", [["vrtk", "report", *present(REPORT_INPUTS), "-o",
                     str(results / "report"), "--anchor", "fixed-rate", "--title", "vrtk: the paper at CPU scale",
                     "--reference", str(DATA / "reference-rd" / "kodak"),
                     *[a for r in REFERENCES for a in ("--reference-match", r)]]], results / "report" / "report.md"),
        # paper Fig. 5: one ECG+bm model against the ECG models trained one per lambda (the same compute)
        ("report-ecg", [["vrtk", "report", *present(ECG_REPORT_INPUTS), "-o", str(results / "report-ecg"),
                         "--anchor", "ecg", "--title", "ECG + bm against ECG one model per lambda (paper Fig. 5)"]],
         results / "report-ecg" / "report.md"),
    ]
    return out


def unpack(entry) -> tuple[list[str], Path | None]:
    """(arguments, file its standard output is saved to or None): a stage command comes bare or as such a pair."""
    return entry if isinstance(entry, tuple) else (entry, None)


def argv(entry) -> list[str]:
    return unpack(entry)[0]


def products(commands) -> list[str]:
    """The model folders a stage's commands write (a recipe's ``out=``, a conversion's ``-o``, a study's
    ``--runs``)."""
    made = []
    for cmd in map(argv, commands):
        if cmd[:2] == ["vrtk", "run"]:
            made += [a.split("=", 1)[1] for a in cmd if a.startswith("out=")]
        elif cmd[:2] == ["vrtk", "convert"]:
            made.append(cmd[cmd.index("-o") + 1])
        elif "--runs" in cmd:
            made.append(cmd[cmd.index("--runs") + 1])
    return made


def reads(commands, folder: str) -> bool:
    """Whether any argument of the commands names ``folder`` or a path inside it."""
    return any(arg.split("=", 1)[-1] == folder or arg.split("=", 1)[-1].startswith(folder + "/")
               for cmd in map(argv, commands) for arg in cmd)


def select(plan, wanted: list[str]) -> list[str]:
    """The stages to run, make-style: the wanted ones (all by default) that are not done, plus every stage whose
    model one of those reads and which is not done itself. A training stage whose results all exist is not rerun
    (results are committed, models are not), and reports always are, when wanted."""
    needed: set[str] = set()
    for index in range(len(plan) - 1, -1, -1):
        name, commands, done = plan[index]
        named = not wanted or name in wanted
        trains = bool(products(commands))  # without --stages, training runs only for a stage that needs it
        if named and (name.startswith("report") or not done.exists() and (wanted or not trains)):
            needed.add(name)
        elif not done.exists() and any(reads(later, folder) for later_name, later, _ in plan[index + 1:]
                                       if later_name in needed for folder in products(commands)):
            needed.add(name)
    return [name for name, _, _ in plan if name in needed]


def run_command(entry, results: Path, dry_run: bool) -> bool:
    """Run one stage command (printed and logged); False if it failed."""
    cmd, capture = unpack(entry)
    line = shlex.join(cmd) + (f" > {capture}" if capture else "")
    print(line, flush=True)
    if dry_run:
        return True
    with open(results / "commands.log", "a") as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    if capture is None:
        return subprocess.run(cmd).returncode == 0
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    print(done.stdout, end="", flush=True)
    if done.returncode == 0:
        write_text_atomic(capture, done.stdout)
    return done.returncode == 0


def point_keys(document: dict) -> list[str]:
    """A name per results point that survives a rerun: its lambda (models), its quality (JPEG/WebP), else its index."""
    results = document["results"]
    n = len(results["bpp"])
    for column, fmt in (("lambda", "lambda {:.6g}"), ("quality", "quality {:g}")):
        values = results.get(column)
        if isinstance(values, list) and len(values) == n and all(v is not None for v in values):
            return [fmt.format(v) for v in values]
    return [f"point {i}" for i in range(n)]


def compare_documents(fresh: dict, committed: dict) -> list[dict]:
    """Per point both results share: bpp, PSNR and MS-SSIM now and before, and the differences."""
    def points(document):
        results = document["results"]
        columns = [results.get(k) or [None] * len(results["bpp"]) for k in ("bpp", "psnr-rgb", "ms-ssim-rgb")]
        return dict(zip(point_keys(document), zip(*columns, strict=True), strict=True))

    old = points(committed)
    rows = []
    for key, (bpp, psnr, msssim) in points(fresh).items():
        if key not in old:
            continue
        bpp0, psnr0, msssim0 = old[key]
        rows.append({"point": key, "bpp": bpp, "bpp_committed": bpp0, "psnr": psnr, "psnr_committed": psnr0,
                     "d_bpp": bpp - bpp0, "d_bpp_percent": 100 * (bpp / bpp0 - 1) if bpp0 else math.nan,
                     "d_psnr": psnr - psnr0,
                     "d_msssim": msssim - msssim0 if msssim is not None and msssim0 is not None else None})
    return rows


def format_comparison(name: str, rows: list[dict], against: str) -> list[str]:
    if not rows:
        return [f"{name}: no point in common with {against}"]
    lines = [f"{name} vs {against}: {len(rows)} point(s) in common"]
    for r in rows:
        ms = "" if r["d_msssim"] is None else f"  MS-SSIM {r['d_msssim']:+.5f}"
        lines.append(f"  {r['point']:<16} bpp {r['bpp']:.4f} vs {r['bpp_committed']:.4f} ({r['d_bpp']:+.4f}, "
                     f"{r['d_bpp_percent']:+.2f} %)  PSNR {r['psnr']:.2f} vs {r['psnr_committed']:.2f} dB "
                     f"({r['d_psnr']:+.3f} dB){ms}")
    worst_bpp = max(abs(r["d_bpp_percent"]) for r in rows)
    worst_psnr = max(abs(r["d_psnr"]) for r in rows)
    lines.append(f"  largest difference: {worst_bpp:.2f} % bpp, {worst_psnr:.3f} dB PSNR")
    return lines


def committed_version(path: Path) -> dict | None:
    """The file as git's HEAD has it (None when it is outside the repository or not committed)."""
    try:
        relative = path.resolve().relative_to(REPO)
    except ValueError:
        return None
    shown = subprocess.run(["git", "-C", str(REPO), "show", f"HEAD:{relative.as_posix()}"], capture_output=True,
                           text=True)
    return json.loads(shown.stdout) if shown.returncode == 0 else None


def compare_folders(fresh: Path, committed: Path) -> list[str]:
    """Every results JSON in ``fresh`` against the one of the same name in ``committed``."""
    lines = []
    names = sorted(p.name for p in fresh.glob("*.json") if (committed / p.name).is_file())
    for name in names:
        new, old = (json.loads((folder / name).read_text()) for folder in (fresh, committed))
        if "results" not in new or "results" not in old:
            continue
        lines += format_comparison(name, compare_documents(new, old), str(committed / name))
    return lines or [f"no results JSON of the same name in {fresh} and {committed}"]


def report_against_commit(target: Path) -> None:
    """After an evaluation wrote ``target``: how far it is from the committed file, if git has one: the file itself
    when it lies in the repository, else the one of that name in the committed results folder."""
    inside = committed_version(target)
    reference = target if inside is not None else REPO / COMMITTED_RESULTS / target.name
    committed = inside if inside is not None else committed_version(reference)
    if committed is not None and target.is_file():
        against = f"{reference.resolve().relative_to(REPO)} at git HEAD"
        print("\n".join(format_comparison(target.name, compare_documents(json.loads(target.read_text()), committed),
                                         against)), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(Path.home() / ".cache" / "vrtk" / "runs" / "reproduce"),
                        help="where models are trained (a cache folder, not committed)")
    parser.add_argument("--results", default=COMMITTED_RESULTS, help="where JSON results and the report go")
    parser.add_argument("--kodak", default=str(DATA / "kodak"))
    parser.add_argument("--train", default=str(DATA / "photos-train"))
    parser.add_argument("--stages", default="", help="comma-separated stage names (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training run")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every training run, e.g. crop=256 (repeatable)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--compare", default=None, metavar="DIR",
                        help="compare the results JSONs in --results with those of the same name in DIR; run nothing")
    args = parser.parse_args()
    runs, results = Path(args.runs), Path(args.results)
    if args.compare:
        print("\n".join(compare_folders(results, Path(args.compare))))
        return 0
    def planned():
        return stages(runs, results, Path(args.kodak), args.train, args.threads, tuple(args.override))

    plan = planned()
    wanted = [s for s in args.stages.split(",") if s]
    unknown = set(wanted) - {name for name, _, _ in plan}
    if unknown:
        print(f"unknown stages: {sorted(unknown)}", file=sys.stderr)
        return 2
    to_run = select(plan, wanted)
    if args.list:
        for name, _, done in plan:
            state = ("rebuild" if done.exists() else "to do") if name in to_run else \
                "done" if done.exists() else "skip: its results exist"
            print(f"{name:<21} {state:<23} ({done})")
        return 0
    results.mkdir(parents=True, exist_ok=True)
    for name in to_run:
        # planned again as each stage starts: a report lists the results present now, made by earlier stages too
        commands = next(c for n, c, _ in planned() if n == name)
        for entry in commands:
            cmd, capture = unpack(entry)
            target = Path(cmd[cmd.index("-o") + 1]) if "-o" in cmd and "eval" in cmd else capture
            if target is not None and target.exists():
                continue
            if cmd[1] == "run" and (Path(cmd[4].split("=", 1)[1]) / "config.yaml").exists():
                cmd = [*cmd, "--resume"]
            print(f"[{name}] ", end="")
            if not run_command((cmd, capture), results, args.dry_run):
                print(f"stage {name} failed: {shlex.join(cmd)}", file=sys.stderr)
                return 1
            if target is not None and target.suffix == ".json" and not args.dry_run:
                report_against_commit(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
