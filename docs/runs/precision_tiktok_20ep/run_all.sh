#!/bin/bash
# The precision comparison of bench/RESULTS.md ("Precision"): MENTOR on the
# real TikTok data, 20 epochs, float32 / tf32 / bf16 training matmuls with
# seed 999, and float32 with seed 1 for the seed-to-seed spread. Run from the
# repository root; results in runs/precision/<mode>_seed<seed>/.
set -e
for spec in "float32 999" "tf32 999" "bf16 999" "float32 1"; do
  set -- $spec
  python -m mentor_jax.train --config configs/tiktok.py --config.epochs=20 \
    --config.matmul_precision=$1 --config.seed=$2 \
    --workdir runs/precision/$1_seed$2
done
