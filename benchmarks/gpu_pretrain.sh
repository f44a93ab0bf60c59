#!/usr/bin/env bash
# Pretrain a paper-width variable-rate base on one CUDA GPU, evaluate it on Kodak with real bitstreams and bring
# back its fp16 weights: one command on a device machine (Python 3.12, torch, no network), inside 10 minutes.
#
#   bash benchmarks/gpu_pretrain.sh prepare      # here, before the device call: wheels in .whl/, data in .gpu/
#   bash benchmarks/gpu_pretrain.sh              # on the device machine (the device tool sets OUT)
#   DEVICE=cpu STEPS=3 OUT=/tmp/gpu-dry bash benchmarks/gpu_pretrain.sh   # dry run here: a tiny model on the CPU
#
# The exact device call is in /work/notes/readme-issue14-gpu.md (carry .whl and .gpu, timeout 600 s).
# `prepare` builds vrtk's own wheel (its entry points register the plugins), downloads the cp312 wheels of what the
# machine lacks (compressai 1.2.8, pytorch-msssim, bjontegaard, thop), packs the photos and Kodak into .gpu/
# (benchmarks/pack_training_data.py) and prints the sizes a device call carries (64 MiB at most).
#
# Stages on the device: install the carried wheels (skipped when everything already imports), check CompressAI and
# vrtk with real round trips, pytest -m cuda, measure training throughput (tf32 and bf16-autocast, a few dozen
# steps each) and plan the step count so that the whole script ends by BUDGET_S, train (`vrtk run bm-finetune
# profile=gpu`), write fp16 weights, evaluate them on Kodak. What comes back in $OUT (8 files at most, 16 MB each):
#   log.txt  probe.json  run-config.yaml  metrics.jsonl  model-fp16/config.json  model-fp16/model.safetensors
#   eval-kodak.json
# Settings (environment): DEVICE=cuda|cpu, STEPS (fixed step count instead of the plan), PRECISION=tf32 (fp32,
# bf16-autocast, or auto: the faster, bf16 only if 15% faster), BUDGET_S=565, TRAIN_MAX_S=420, EVAL_RESERVE_S=100,
# INSTALL=auto|1|0, WHEELS=.whl, DATA, KODAK, EVAL_ARGS, WORK (run folder, not returned), PYTHON=python3.
set -euo pipefail

START=$(date +%s)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
CARRIED_WHEELS=(compressai==1.2.8 pytorch-msssim==1.0.0 bjontegaard==1.3.0 thop==0.1.1.post2209072238)

prepare() {  # here, with network: everything the device call carries
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")" "$WHEELS"
    case $WHEELS in  # a folder in the repository is never committed
        /*) ;;
        *) grep -qxF "/$WHEELS/" "$exclude" 2>/dev/null || echo "/$WHEELS/" >>"$exclude" ;;
    esac
    rm -f "$WHEELS"/vrtk-*.whl  # one version of each wheel, built from the tree as it is now
    local had_build=0
    if [ -d build ]; then had_build=1; fi
    "$PY" -m pip wheel -q --no-deps . -w "$WHEELS"
    if [ "$had_build" = 0 ]; then rm -rf build; fi  # setuptools' build folder, if this made it
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$WHEELS" "${CARRIED_WHEELS[@]}"
    ls -l "$WHEELS"
    local twice
    twice=$(find "$WHEELS" -name '*.whl' -printf '%f\n' | cut -d- -f1 | sort | uniq -d)
    if [ -n "$twice" ]; then echo "prepare: two versions of: $twice (remove one)" >&2; return 1; fi
    if [ ! -f .gpu/MANIFEST.json ]; then "$PY" benchmarks/pack_training_data.py; fi
    "$PY" benchmarks/pack_training_data.py --sizes
}
if [ "${1:-}" = prepare ]; then
    prepare
    exit
fi

: "${OUT:?set OUT to an empty folder for the results (the device tool sets it)}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-}
PRECISION=${PRECISION:-tf32}
BUDGET_S=${BUDGET_S:-565}
TRAIN_MAX_S=${TRAIN_MAX_S:-420}
EVAL_RESERVE_S=${EVAL_RESERVE_S:-100}
INSTALL=${INSTALL:-auto}
DATA=${DATA:-.gpu/train/photos-train,.gpu/train/photos-train-2}
KODAK=${KODAK:-.gpu/kodak}
WORK=${WORK:-$(mktemp -d)}
RUN=$WORK/run
DEADLINE=$((START + BUDGET_S))

OVERRIDES=("data=$DATA" "device=$DEVICE")
if [ "$DEVICE" = cpu ]; then  # a dry run: the same stages on a tiny model, in a few minutes
    OVERRIDES+=("arch_kwargs={N: 16, M: 24}" "crop=64" "batch=2" "log_every=1" "ckpt_every=2" "threads=1")
    EVAL_ARGS=${EVAL_ARGS:---n-points 2 --limit 2 --repeats 1}
    EVAL_NAME="gpu-pretrain dry run (cpu, tiny model)"
    PROBE=(--precisions tf32 bf16-autocast --warmup 1 --steps 2)
else
    EVAL_ARGS=${EVAL_ARGS:---n-points 8 --repeats 1}
    EVAL_NAME="gpu-pretrain bm N128/M192"
    PROBE=(--precisions tf32 bf16-autocast --warmup 10 --steps 30)
fi

mkdir -p "$WORK"
exec > >(tee -a "$OUT/log.txt") 2>&1
TEE_PID=$!
export PYTHONUNBUFFERED=1 VRTK_OFFLINE=1

elapsed() { echo $(($(date +%s) - START)); }
stage() { printf '\n== [%s s] %s\n' "$(elapsed)" "$*"; }

finish() {
    local rc=$?
    # what training wrote is worth having even when a later stage failed
    if [ -f "$RUN/metrics.jsonl" ]; then cp "$RUN/metrics.jsonl" "$OUT/metrics.jsonl"; fi
    if [ -f "$RUN/config.yaml" ]; then cp "$RUN/config.yaml" "$OUT/run-config.yaml"; fi
    stage "done, exit status $rc; $OUT holds:"
    "$PY" benchmarks/gpu_pretrain.py outcheck "$OUT" || rc=$((rc ? rc : 1))
    exec >&- 2>&-  # let tee write the end of log.txt before the device tool collects $OUT
    wait "$TEE_PID" 2>/dev/null || true
    exit "$rc"
}
trap finish EXIT

stage "gpu_pretrain: DEVICE=$DEVICE PRECISION=$PRECISION STEPS=${STEPS:-planned} BUDGET_S=$BUDGET_S, repo $PWD"
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
"$PY" --version

have_packages() {  # CompressAI and the rest import, and vrtk's plugins are registered (entry points)
    "$PY" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as md
import bjontegaard, compressai, pytorch_msssim, vrtk_plugins  # noqa: F401
raise SystemExit(0 if {"bm", "ecg", "gain"} <= {ep.name for ep in md.entry_points(group="vrtk")} else 1)
EOF
}

if [ "$INSTALL" = 1 ] || { [ "$INSTALL" = auto ] && ! have_packages; }; then
    stage "install the wheels in $WHEELS (--no-deps: compressai declares numpy<2, the machine's numpy is used)"
    ls -l "$WHEELS"/*.whl
    SITE=${SITE:-${TMPDIR:-/tmp}/vrtk-site}
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl
    # The tree's code runs, not the wheel's copy of it (a wheel can be older than the tree); the wheel's metadata
    # in $SITE registers the plugins' entry points.
    TREE=${TMPDIR:-/tmp}/vrtk-tree
    rm -rf "$TREE" && mkdir -p "$TREE"
    ln -s "$PWD/vrtk" "$TREE/vrtk"
    ln -s "$PWD/plugins" "$TREE/vrtk_plugins"
    ln -s "$PWD/recipes" "$TREE/vrtk_recipes"
    export PYTHONPATH="$TREE:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    stage "install skipped: compressai, pytorch_msssim, bjontegaard and vrtk's plugins already import"
fi

stage "check: CompressAI and vrtk round trips on $DEVICE"
"$PY" benchmarks/gpu_pretrain.py check --device "$DEVICE"
if ! "$PY" - <<'EOF' 2>/dev/null; then  # timm's "wsd" schedule is recent: fall back rather than fail the run
import torch
from timm.scheduler import create_scheduler_v2

opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
create_scheduler_v2(opt, sched="wsd", num_epochs=100, warmup_epochs=10, decay_epochs=0.2, step_on_epochs=False,
                    updates_per_epoch=1)
EOF
    echo "WARNING: this timm has no 'wsd' schedule: training with sched=cosine instead"
    OVERRIDES+=("sched=cosine")
fi

stage "pytest -m cuda (skipped without CUDA)"
if ! "$PY" -m pytest -m cuda tests -p no:cacheprovider --continue-on-collection-errors -rs; then
    echo "WARNING: pytest -m cuda failed (above); training goes on"
fi

stage "throughput probe and plan (deadline in $((DEADLINE - $(date +%s))) s)"
"$PY" benchmarks/gpu_pretrain.py probe --device "$DEVICE" --deadline "$DEADLINE" --precision "$PRECISION" \
    "${PROBE[@]}" --reserve "$EVAL_RESERVE_S" --train-max "$TRAIN_MAX_S" --steps-override "${STEPS:-0}" \
    -o "$OUT/probe.json" -- "${OVERRIDES[@]}"
read -r PLANNED WARMUP CHOSEN < <("$PY" -c 'import json, sys; p = json.load(open(sys.argv[1]))
print(p["steps"], p["warmup_steps"], p["precision"])' "$OUT/probe.json")

stage "train: bm-finetune profile=gpu, $PLANNED steps ($WARMUP warm-up), precision $CHOSEN -> $RUN"
"$PY" -m vrtk run bm-finetune profile=gpu "${OVERRIDES[@]}" "steps=$PLANNED" "warmup_steps=$WARMUP" \
    "precision=$CHOSEN" "out=$RUN" --no-progress
"$PY" - "$RUN/metrics.jsonl" <<'EOF'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
shown = records[:: max(1, len(records) // 10)]
for r in shown + ([records[-1]] if shown[-1] is not records[-1] else []):
    print(f"step {r['step']:>6}  lambda {r['lmbda']:<7g} bpp {r['bpp']:.4f}  psnr {r.get('psnr', 0):6.2f}  "
          f"loss {r['loss']:.4g}  lr {r['lr']:.2e}  {r['elapsed_s']:7.1f} s")
EOF

stage "fp16 weights -> $OUT/model-fp16"
"$PY" -m vrtk convert "$RUN/model" -o "$OUT/model-fp16" --half --full

LEFT=$((DEADLINE - $(date +%s)))
stage "evaluate on $KODAK with real bitstreams ($LEFT s left)"
if [ "$LEFT" -lt 20 ]; then
    echo "WARNING: no time left to evaluate; the weights are in $OUT/model-fp16"
else
    # shellcheck disable=SC2086  # EVAL_ARGS is a list of options
    timeout "$LEFT" "$PY" -m vrtk eval "$OUT/model-fp16" --data "$KODAK" $EVAL_ARGS --device "$DEVICE" \
        --name "$EVAL_NAME" --no-progress -o "$OUT/eval-kodak.json" ||
        echo "WARNING: evaluation failed or ran out of time (status $?); the weights are in $OUT/model-fp16"
fi
