#!/usr/bin/env bash
# The tiny-GPT-2 runs of docs/code.md: a warm start per seed, then each method from that checkpoint.
# Usage: bash docs/results/code-mbpp-tiny/run.sh   (from the repository root; OUT, METHODS, SEEDS, LANES to change)
set -u
OUT=${OUT:-runs/code/mbpp-tiny}
METHODS=${METHODS:-"heron coderl ground-truth weighted-sum"}
SEEDS=${SEEDS:-"0 1 2"}
LANES=${LANES:-4}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 OUT
mkdir -p "$OUT/logs"
for s in $SEEDS; do  # the warm start (300 supervised steps) and its Pass@k: the "no RL" row
  [ -f "$OUT/warm/seed$s/eval.json" ] || heron code train configs/code-mbpp-tiny.yaml --steps 0 --seed "$s" \
    --out "$OUT/warm/seed$s" --no-progress > "$OUT/logs/warm-seed$s.log" 2>&1
done
for s in $SEEDS; do for m in $METHODS; do echo "$m $s"; done; done | xargs -P "$LANES" -L 1 bash -c '
  [ -f "$OUT/$0/seed$1/eval.json" ] || heron code train configs/code-mbpp-tiny-rl.yaml --model "$OUT/warm/seed$1/model" \
    --method "$0" --seed "$1" --out "$OUT/$0/seed$1" --no-progress > "$OUT/logs/$0-seed$1.log" 2>&1'
