#!/usr/bin/env bash
# Prepares, on THIS machine, everything a call of the device tool carries for
# bench/device_suite.sh, and prints the exact `run` call to make.
#
#   bash bench/prepare_device.sh
#
# The device machine (bench/RESULTS.md, "GPU (H200): how to run") has no
# network; it already has Python 3.12, jax 0.11.2 (CUDA), flax, optax, orbax,
# numpy, scipy, pandas, absl-py, PyYAML, torch 2.11 and torch_geometric 2.8.
# What it lacks travels in two ignored folders (never committed):
#
#   .whl/                 wheels for Python 3.12, installed there with
#                         `pip --no-index` (ml-collections; WHEELS adds more)
#   .devcarry/MENTOR/     the official MENTOR code (Jinfeng-Xu/MENTOR), for
#                         bench/reference/; MENTOR.commit names its commit
#   .devcarry/tiktok/     a copy of ../shared/data/tiktok (the ../shared
#                         beside the checkout does not travel)
#
# Where the official code comes from, first that works:
#   MENTOR_SRC=<folder>      an existing checkout, copied
#   MENTOR_GIT_DIR=<git dir> a (bare) clone, exported with `git archive HEAD`
#                            (default: /work/.mirror/Jinfeng-Xu+MENTOR/repo)
#   otherwise                `git clone --depth 1` from GitHub
# Re-running is cheap: the wheels are re-downloaded, existing copies kept
# (FORCE=1 replaces them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-ml-collections==1.1.0}"
MENTOR_GIT_DIR="${MENTOR_GIT_DIR:-/work/.mirror/Jinfeng-Xu+MENTOR/repo}"
MENTOR_URL="${MENTOR_URL:-https://github.com/Jinfeng-Xu/MENTOR}"
TIKTOK_SRC="${TIKTOK_SRC:-../shared/data/tiktok}"
LIMIT_MIB=64

# 1. The carried folders must never be committed nor travel uncarried.
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
for pattern in /.whl/ /.devcarry/; do
  grep -qxF "$pattern" "$exclude" 2>/dev/null || echo "$pattern" >>"$exclude"
done

# 2. Wheels for the device's Python 3.12 (pure ones are platform-free; the
# platform list is the device README's, for any binary wheel in WHEELS).
rm -rf .whl && mkdir -p .whl
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl $WHEELS
echo "wheels:"; ls -1 .whl

# 3. The official MENTOR checkout, unmodified.
dst=.devcarry/MENTOR
if [[ -n "${FORCE:-}" ]]; then rm -rf "$dst"; fi
if [[ ! -f "$dst/src/models/mentor.py" ]]; then
  rm -rf "$dst" && mkdir -p "$dst"
  if [[ -n "${MENTOR_SRC:-}" ]]; then
    cp -r "$MENTOR_SRC"/. "$dst"/ && rm -rf "$dst/.git"
    commit="$(git -C "$MENTOR_SRC" rev-parse HEAD 2>/dev/null || echo unknown)"
  elif git --git-dir="$MENTOR_GIT_DIR" rev-parse HEAD >/dev/null 2>&1; then
    git --git-dir="$MENTOR_GIT_DIR" archive HEAD | tar -x -C "$dst"
    commit="$(git --git-dir="$MENTOR_GIT_DIR" rev-parse HEAD)"
  else
    tmp="$(mktemp -d)"
    git clone --quiet --depth 1 "$MENTOR_URL" "$tmp/MENTOR"
    commit="$(git -C "$tmp/MENTOR" rev-parse HEAD)"
    rm -rf "$tmp/MENTOR/.git" && cp -r "$tmp/MENTOR"/. "$dst"/
    rm -rf "$tmp"
  fi
  echo "$commit" >.devcarry/MENTOR.commit
fi
[[ -f "$dst/src/models/mentor.py" ]] || {
  echo "error: $dst/src/models/mentor.py missing after the copy" >&2; exit 1; }
echo "official MENTOR: $dst at $(cat .devcarry/MENTOR.commit 2>/dev/null)"

# 4. TikTok for the precision runs (optional: the suite skips them without).
if [[ -f "$TIKTOK_SRC/tiktok.inter" ]]; then
  mkdir -p .devcarry/tiktok
  for f in tiktok.inter image_feat.npy audio_feat.npy README.md; do
    if [[ -f "$TIKTOK_SRC/$f" ]]; then cp -f "$TIKTOK_SRC/$f" .devcarry/tiktok/; fi
  done
  chmod -R u+w .devcarry/tiktok
  echo "TikTok: .devcarry/tiktok ($(du -sh .devcarry/tiktok | cut -f1))"
else
  echo "TikTok: $TIKTOK_SRC/tiktok.inter not found; the suite will skip it"
fi

# 5. What travels: tracked + untracked-not-ignored files, plus the carried
# folders. The device tool refuses more than 64 MiB.
tree_bytes=$(git ls-files -z -co --exclude-standard \
  | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
carry_bytes=$(du -sb .whl .devcarry | awk '{s += $1} END {print s + 0}')
total=$((tree_bytes + carry_bytes))
awk -v t="$tree_bytes" -v c="$carry_bytes" -v l="$LIMIT_MIB" 'BEGIN {
  m = 1048576; printf "travels: working tree %.1f MiB + carried %.1f MiB = " \
    "%.1f MiB (limit %d)\n", t / m, c / m, (t + c) / m, l }'
if ((total >= LIMIT_MIB * 1048576)); then
  echo "error: over the device tool's $LIMIT_MIB MiB limit" >&2; exit 1
fi

cat <<'EOF'

The device call (the `run` tool), exactly:
  command:   bash bench/device_suite.sh
  carry:     [".whl", ".devcarry"]
  timeout_s: 540
The suite installs .whl/*.whl with --no-index into /tmp/site, finishes in
SUITE_BUDGET_S (default 450 s) and writes measurements.jsonl, summary.md and
suite.log to $OUT. A second call can rerun chosen steps, e.g.
  command:   STEPS=tiktok_float32,tiktok_tf32,tiktok_bf16 bash bench/device_suite.sh
EOF
