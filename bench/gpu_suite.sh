#!/usr/bin/env bash
# Runs the whole bench suite on an accelerator machine in one call.
#
#   bash bench/gpu_suite.sh                 # results in $OUT or bench/out
#   QUICK=1 bash bench/gpu_suite.sh         # smaller sizes, ~5 min
#
# Needs a Python with jax (with its CUDA/TPU plugin), flax, optax and
# ml_collections, the repository importable (run from its root), and about
# 3 GB of disk for the generated datasets (BENCH_DATA, default /tmp). Every
# script is the CPU one, unchanged: on GPU the spmm kernel resolves to
# 'segment_sum' (config spmm_kernel='auto') and peak device memory is
# reported next to peak RSS. The official PyTorch reference is not run here
# (it needs its own torch venv and checkout: see bench/reference/).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-bench/out}"
DATA="${BENCH_DATA:-/tmp/mentor_bench_data}"
mkdir -p "$OUT_DIR" "$DATA"
export PYTHONUNBUFFERED=1
LOG="$OUT_DIR/gpu_suite.log"

step() {  # step NAME CMD...: runs, tees to the log, never aborts the suite
  local name="$1"; shift
  echo "=== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$LOG"
  echo "=== $name: rc=${PIPESTATUS[0]} in $((SECONDS - t0)) s" | tee -a "$LOG"
}

"$PY" -c 'import jax, flax, optax, ml_collections; print(jax.devices())' \
  2>&1 | tee -a "$LOG" || { echo "jax/flax/optax/ml_collections missing"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  2>/dev/null | tee -a "$LOG"

if [[ -n "${QUICK:-}" ]]; then
  SIZES=2000,8000,20000; SCALES=0.25,1; EPOCHS=3; STEPS=4
else
  SIZES=2000,8000,20000,40000; SCALES=0.25,0.5,1,2; EPOCHS=5; STEPS=8
fi

step synth_baby "$PY" -m data_prep synth --preset baby --out "$DATA/baby" \
  --name baby --npz "$DATA/synth_baby.npz"
step propagation "$PY" bench/bench_propagation.py --rounds 5 --reps 6
step infonce "$PY" bench/bench_infonce.py --sizes "$SIZES" \
  --naive-max-gib 60 --reps 30 --target-s 10 --out "$OUT_DIR/infonce.json"
step train_baby "$PY" bench/bench_train.py --config configs/synth_baby.py \
  --data-npz "$DATA/synth_baby.npz" --epochs-timed "$EPOCHS" --warmup 1 \
  --eval-reps 15 --out "$OUT_DIR/train_synth_baby.json"
# Clothing: full epochs are cheap on a GPU, so time them directly.
step synth_clothing "$PY" -m data_prep synth --preset clothing \
  --out "$DATA/clothing_x1" --name clothing \
  --npz "$DATA/synth_clothing_x1.npz"
step train_clothing "$PY" bench/bench_train.py \
  --config configs/synth_clothing.py --data-npz "$DATA/synth_clothing_x1.npz" \
  --epochs-timed "$EPOCHS" --warmup 1 --eval-reps 15 \
  --out "$OUT_DIR/train_synth_clothing.json"
# Reduced-precision matmuls (mentor_jax/precision.py): native TF32 / bf16.
for prec in tf32 bf16; do
  step "train_clothing_$prec" "$PY" bench/bench_train.py \
    --config configs/synth_clothing.py \
    --data-npz "$DATA/synth_clothing_x1.npz" --variants full \
    --set "matmul_precision=$prec" --epochs-timed "$EPOCHS" --warmup 1 \
    --eval-reps 3 --out "$OUT_DIR/train_synth_clothing_$prec.json"
done
step matmul "$PY" bench/bench_matmul.py --rounds 5 --reps 6 \
  --out "$OUT_DIR/matmul.json"
step growth "$PY" bench/bench_growth.py --data-dir "$DATA" \
  --scales "$SCALES" --steps "$STEPS" --reps 3 --eval-reps 3 \
  --out "$OUT_DIR/growth_clothing.json"
echo "results in $OUT_DIR" | tee -a "$LOG"
