#!/usr/bin/env bash
# Every GPU measurement of issue 14 in one call on the lent machine.
#
#   bash bench/device_suite.sh [OUT_DIR]      # default $OUT, else bench/out/device
#   SMOKE=1 bash bench/device_suite.sh DIR    # the same steps, tiny, on a CPU
#   STEPS=ours_clothing_tf32,matmul bash bench/device_suite.sh
#
# Prepare the call with `bash bench/prepare_device.sh` (it prints the exact
# device `run` call); bench/RESULTS.md, "GPU (H200): how to run", has the
# rest. The machine as it is: Python 3.12 with jax (CUDA), flax, optax,
# orbax, numpy, scipy, pandas, torch and torch_geometric; no network, no
# ml-collections. So the suite installs only carried wheels (.whl/*.whl,
# pip --no-index --no-deps) into a --target folder put on PYTHONPATH, runs
# our code from this working tree and the official MENTOR from the carried
# checkout (.devcarry/MENTOR) through bench/reference/.
#
# Output, at most 3 files (the device tool returns at most 8):
#   measurements.jsonl  one JSON line per measurement (bench/device_record.py
#                       documents the fields); a step that did not run has
#                       status "skipped" and a reason, one that broke
#                       "failed" with its error's tail
#   summary.md          the tables: side by side, ratios, targets, knobs,
#                       matmul rates, TikTok precision (also printed last)
#   suite.log           everything every step printed
#
# Every step runs under `timeout` (its cap, or what is left of the suite's
# budget SUITE_BUDGET_S, default 450 s, so the call ends within 8 minutes);
# a step that fails is recorded and the suite goes on. Steps, in order of
# priority (what matters most runs first while time is left):
#   wheels, env, smoke_train    carried wheels; machine; a 2-epoch CLI run
#                               that fails fast on a jax API difference
#   ours_clothing_{float32,tf32,bf16}, official_clothing
#   ours_baby_{float32,tf32}, official_baby, ours_baby_bf16
#       ours: bench/bench_train.py, full MENTOR, whole timed epochs, eval
#       reps, peak device memory (jax memory_stats); official: the same
#       synthetic files through bench/reference/run_reference.py (whole
#       epochs, Trainer.evaluate, torch.cuda peak memory)
#   matmul                      bench/bench_matmul.py: the matmul rates
#   knob_clothing_<prec>_<k-v>  the Clothing epoch with one override per
#                               KNOBS entry (default: the spmm kernel that
#                               'auto' does not pick, a larger InfoNCE tile)
#   tiktok_{float32,tf32,bf16}  20 epochs of real TikTok per mode (the
#                               carried copy .devcarry/tiktok), train CLI
# The synthetic datasets (synth_clothing, synth_baby) are made on first use.
#
# Environment knobs: SMOKE, STEPS, SUITE_BUDGET_S, KNOBS, KNOB_PRECISION,
# TIKTOK_EPOCHS, PYTHON (python3), REF_PYTHON (default PYTHON), WHEEL_DIR
# (.whl), MENTOR_SRC (.devcarry/MENTOR), TIKTOK_DIR (.devcarry/tiktok),
# SCRATCH (a new temporary folder, removed at the end unless KEEP_SCRATCH).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
T0=$SECONDS

OUT_DIR="${1:-${OUT:-bench/out/device}}"
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"
JSONL="$OUT_DIR/measurements.jsonl"
LOG="$OUT_DIR/suite.log"
SUMMARY="$OUT_DIR/summary.md"
for f in "$JSONL" "$LOG" "$SUMMARY"; do
  if [[ -e "$f" ]]; then
    echo "error: $f exists; give an empty folder (nothing is overwritten)" >&2
    exit 2
  fi
done
: >"$JSONL"; : >"$LOG"

PY="${PYTHON:-python3}"
REF_PY="${REF_PYTHON:-$PY}"
WHEEL_DIR="${WHEEL_DIR:-$REPO/.whl}"
MENTOR_SRC="${MENTOR_SRC:-$REPO/.devcarry/MENTOR}"
TIKTOK_DIR="${TIKTOK_DIR:-$REPO/.devcarry/tiktok}"
SCRATCH="${SCRATCH:-$(mktemp -d "${TMPDIR:-/tmp}/device_suite.XXXXXX")}"
mkdir -p "$SCRATCH"
MODE=device
[[ -n "${SMOKE:-}" ]] && MODE=smoke
RESERVE_S=15  # kept back for the summary
export PYTHONUNBUFFERED=1
# Allocate GPU memory as needed: the bench parents start a jax client for
# their banner while their worker children measure, and each would otherwise
# take 75 % of the card. Peak use is read from the allocator either way.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

if [[ "$MODE" == smoke ]]; then
  BUDGET="${SUITE_BUDGET_S:-900}"
  # Shapes named like the real ones (the official code needs
  # configs/dataset/<name>.yaml), sized for a CPU in seconds.
  SYNTH_baby="--users 150 --items 80 --interactions 1200 --dim-v 32 --dim-t 16"
  SYNTH_clothing="--users 180 --items 100 --interactions 1500 --dim-v 32 --dim-t 16"
  DIMS_baby="32 16"; DIMS_clothing="32 16"
  OURS_ARGS="--warmup 0 --epochs-timed 1 --eval-reps 2"
  REF_ARGS="--warmup 1 --batches 1 --epochs 1 --eval-reps 1"
  MATMUL_ARGS="--items 300 --in-dim 64 --out-dim 32 --rounds 1 --reps 2"
  TIKTOK_EPOCHS="${TIKTOK_EPOCHS:-2}"
  SMOKE_EPOCHS=1
else
  BUDGET="${SUITE_BUDGET_S:-450}"
  SYNTH_baby=""; SYNTH_clothing=""
  DIMS_baby="4096 384"; DIMS_clothing="4096 384"
  OURS_ARGS="--warmup 0 --epochs-timed 2 --eval-reps 20"
  REF_ARGS="--warmup 2 --batches 0 --epochs 2 --eval-reps 2"
  MATMUL_ARGS="--items 7050,23033,131072 --rounds 5 --reps 6"
  TIKTOK_EPOCHS="${TIKTOK_EPOCHS:-20}"
  SMOKE_EPOCHS=2
fi
KNOBS="${KNOBS:-spmm_kernel=csr infonce_block_size=1024}"
KNOB_PRECISION="${KNOB_PRECISION:-tf32}"

log() { echo "$*" | tee -a "$LOG"; }

left_s() { echo $((BUDGET - (SECONDS - T0) - RESERVE_S)); }

wanted() {  # wanted NAME: in STEPS (or STEPS unset)
  [[ -z "${STEPS:-}" ]] && return 0
  [[ ",$STEPS," == *",$1,"* ]]
}

record() { # record ARGS...: bench/device_record.py, never fatal
  "$PY" bench/device_record.py "$@" --jsonl "$JSONL" --mode "$MODE" \
    2>&1 | tee -a "$LOG"
  if [[ ${PIPESTATUS[0]} -ne 0 ]]; then
    # The recorder itself broke (no usable Python?): keep a line anyway.
    printf '{"step": "%s", "status": "failed", "reason": "recorder failed"}\n' \
      "$STEP_NAME" >>"$JSONL"
  fi
}

skip() {  # skip NAME KIND REASON
  STEP_NAME="$1"
  wanted "$1" || return 0
  log "=== $1: skipped: $3"
  record skip --step "$1" --kind "$2" --reason "$3"
}

# run_step NAME KIND CAP_S MIN_S [--json F | --workdir D] [--meta K=V]... -- CMD...
# Runs CMD under timeout (CAP_S, or less if the budget is short), logs it and
# records one measurement. Returns CMD's status (0 when skipped by STEPS).
run_step() {
  local name="$1" kind="$2" cap="$3" min="$4"; shift 4
  local rec=()
  while [[ "$1" != -- ]]; do rec+=("$1" "$2"); shift 2; done
  shift
  STEP_NAME="$name"
  wanted "$name" || return 0
  local left; left="$(left_s)"
  if ((left < min)); then
    skip "$name" "$kind" "suite budget: ${left} s left of ${BUDGET} s, the step needs at least ${min} s"
    return 3
  fi
  local t=$((cap < left ? cap : left))
  log "=== $name (timeout ${t} s, ${left} s of budget left): $*"
  local t1=$SECONDS steplog="$SCRATCH/$name.log"
  timeout -k 10 "$t" "$@" >"$steplog" 2>&1
  local rc=$?
  cat "$steplog" >>"$LOG"
  tail -n 25 "$steplog"
  local wall=$((SECONDS - t1))
  log "=== $name: rc=$rc in ${wall} s"
  record add --step "$name" --kind "$kind" --rc "$rc" --wall-s "$wall" \
    --timeout-s "$t" --log "$steplog" "${rec[@]}"
  return $rc
}

# --- wheels: only what was carried, only --no-index -------------------------
SITE="$SCRATCH/site"
shopt -s nullglob
wheels=("$WHEEL_DIR"/*.whl)
shopt -u nullglob
if ((${#wheels[@]})); then
  if run_step wheels plain 120 10 -- "$PY" -m pip install -q --no-index \
      --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "${wheels[@]}"; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
elif "$PY" -c 'import ml_collections' 2>/dev/null; then
  skip wheels plain "no wheels in $WHEEL_DIR, and nothing is missing (ml_collections imports)"
else
  skip wheels plain "no wheels in $WHEEL_DIR and ml_collections is missing: run bench/prepare_device.sh and carry .whl"
fi

# --- the machine ------------------------------------------------------------
run_step env env 120 10 --json "$SCRATCH/env.json" -- \
  bash -c '"$0" bench/device_record.py probe --ref-python "$1" >"$2"' \
  "$PY" "$REF_PY" "$SCRATCH/env.json"
grep -h . "$SCRATCH/env.json" 2>/dev/null | head -40

# --- smoke: a short training run through the CLI ----------------------------
run_step smoke_train train_cli 150 20 --workdir "$SCRATCH/smoke" -- \
  "$PY" -m mentor_jax.train --config configs/tiny.py \
  --workdir "$SCRATCH/smoke" --config.data_npz="$SCRATCH/tiny.npz" \
  --config.epochs="$SMOKE_EPOCHS"

# --- synthetic data, on first use ---------------------------------------------
synth() {  # synth SHAPE: the MMRec folder and our .npz of it, once
  local shape="$1" var="SYNTH_$1"
  [[ -f "$SCRATCH/data/synth_$shape.npz" ]] && return 0
  [[ -f "$SCRATCH/data/synth_$shape.failed" ]] && return 1
  local had_steps="${STEPS:-}"
  STEPS=""  # data a wanted step needs is always made
  # shellcheck disable=SC2086
  run_step "synth_$shape" plain 240 20 -- "$PY" -m data_prep synth \
    --preset "$shape" --out "$SCRATCH/data/$shape" --name "$shape" \
    --npz "$SCRATCH/data/synth_$shape.npz" ${!var}
  local rc=$?
  STEPS="$had_steps"
  ((rc == 0)) || touch "$SCRATCH/data/synth_$shape.failed"
  return $rc
}

ours() {  # ours SHAPE PRECISION [STEP_NAME [KEY=VALUE...]]
  local shape="$1" prec="$2" name="${3:-ours_$1_$2}"; shift 3 2>/dev/null || shift $#
  wanted "$name" || return 0
  if ! synth "$shape"; then
    skip "$name" bench_train "no synthetic $shape data (synth_$shape failed)"
    return 0
  fi
  local dims=(${DIMS_clothing}); [[ "$shape" == baby ]] && dims=(${DIMS_baby})
  local sets=(--set "matmul_precision=$prec")
  local kv; for kv in "$@"; do sets+=(--set "$kv"); done
  # shellcheck disable=SC2086
  run_step "$name" bench_train 180 40 --json "$SCRATCH/$name.json" \
    --meta "shape=\"$shape\"" --meta "dim_v=${dims[0]}" \
    --meta "dim_t=${dims[1]}" -- \
    "$PY" bench/bench_train.py --config "configs/synth_$shape.py" \
    --data-npz "$SCRATCH/data/synth_$shape.npz" --variants full \
    "${sets[@]}" $OURS_ARGS --out "$SCRATCH/$name.json"
}

official() {  # official SHAPE
  local shape="$1" name="official_$1"
  wanted "$name" || return 0
  if [[ ! -f "$MENTOR_SRC/src/models/mentor.py" ]]; then
    skip "$name" reference "no official checkout at $MENTOR_SRC (run bench/prepare_device.sh and carry .devcarry)"
    return 0
  fi
  if ! JAX_PLATFORMS=cpu "$REF_PY" -c 'import torch, torch_geometric' \
      >/dev/null 2>&1; then
    skip "$name" reference "$REF_PY has no torch and torch_geometric (set REF_PYTHON)"
    return 0
  fi
  if ! synth "$shape"; then
    skip "$name" reference "no synthetic $shape data (synth_$shape failed)"
    return 0
  fi
  local left; left="$(left_s)"; local cap=240; ((left < cap)) && cap=$left
  # The worker gets the step's time less the data layout's; it leaves out
  # whole epochs that would not fit.
  local inner=$((cap - 30)); ((inner < 30)) && inner=30
  # shellcheck disable=SC2086
  run_step "$name" reference 240 60 --json "$SCRATCH/$name.json" \
    --meta "shape=\"$shape\"" -- \
    "$PY" bench/reference/run_reference.py --mentor-src "$MENTOR_SRC" \
    --ref-python "$REF_PY" --folder "$SCRATCH/data/$shape" --name "$shape" \
    --data-root "$SCRATCH/refroot" $REF_ARGS --timeout "$inner" \
    --out "$SCRATCH/$name.json"
}

tiktok() {  # tiktok PRECISION
  local prec="$1" name="tiktok_$1" src="$TIKTOK_DIR" tfeat=audio_feat.npy
  wanted "$name" || return 0
  if [[ "$MODE" == smoke ]]; then
    # A stand-in with TikTok's file names, so the same command runs.
    src="$SCRATCH/data/tiktok_standin"
    if [[ ! -f "$src/tiktok.inter" ]]; then
      "$PY" -m data_prep synth --preset tiny --out "$src" --name tiktok \
        >>"$LOG" 2>&1 && cp "$src/text_feat.npy" "$src/audio_feat.npy"
    fi
  fi
  if [[ ! -f "$src/tiktok.inter" ]]; then
    skip "$name" train_cli "no TikTok copy at $src (run bench/prepare_device.sh and carry .devcarry)"
    return 0
  fi
  run_step "$name" train_cli 150 45 --workdir "$SCRATCH/$name" \
    --meta "precision=\"$prec\"" --meta "source=\"$src\"" -- \
    "$PY" -m mentor_jax.train --config configs/tiktok.py \
    --workdir "$SCRATCH/$name" --config.data_source="$src" \
    --config.data_npz="$SCRATCH/data/tiktok_$MODE.npz" \
    --config.t_feat_file="$tfeat" --config.epochs="$TIKTOK_EPOCHS" \
    --config.matmul_precision="$prec" --config.seed=999
}

ours clothing float32
ours clothing tf32
official clothing
ours clothing bf16
ours baby float32
official baby
ours baby tf32
run_step matmul matmul 90 20 --json "$SCRATCH/matmul.json" -- \
  "$PY" bench/bench_matmul.py $MATMUL_ARGS --out "$SCRATCH/matmul.json"
for kv in $KNOBS; do
  ours clothing "$KNOB_PRECISION" \
    "knob_clothing_${KNOB_PRECISION}_${kv//=/-}" "$kv"
done
tiktok float32
tiktok tf32
tiktok bf16
ours baby bf16

# --- summary: the last thing printed (the device tool returns the tail) ------
log "=== suite done in $((SECONDS - T0)) s of ${BUDGET} s ($MODE); results in $OUT_DIR"
"$PY" bench/device_record.py summary --jsonl "$JSONL" --out "$SUMMARY" \
  >>"$LOG" 2>&1 || echo "summary failed (see $LOG)" | tee -a "$LOG"
# The device tool returns files of at most 16 MiB.
if (($(stat -c %s "$LOG") > 15 * 1048576)); then
  tail -c $((15 * 1048576)) "$LOG" >"$LOG.tail" && mv "$LOG.tail" "$LOG"
fi
[[ -n "${KEEP_SCRATCH:-}" ]] || rm -rf "$SCRATCH"
cat "$SUMMARY" 2>/dev/null
exit 0
