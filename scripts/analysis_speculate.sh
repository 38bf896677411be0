#!/usr/bin/env bash
# Speculation on a model trained here (ANALYSIS.md, section 6): exports the final checkpoint
# of the loss-free-balanced run of scripts/analysis.sh to the Hugging Face deepseek_v3 layout,
# collects routing traces on the built-in validation split (every domain, balanced), and runs
# the speculator against every baseline with the offloading simulation.
#   scripts/analysis_speculate.sh [RUN]     (default RUN = an_bal_bias_g1e-3)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-an_bal_bias_g1e-3}
N=${N:-120}
make -s build/export build/collect build/speculate >/dev/null
out=runs/${RUN}_spec
mkdir -p "$out"
t0=$(date +%s)
./build/export --ckpt "checkpoints/$RUN" --out "$out/hf" > "$out/export.log" 2>&1
./build/collect --model "$out/hf" --data data/cache/default/val_000.bin --n "$N" --max-len 128 --out "$out/val.trace" \
  --quiet > "$out/collect.log" 2>&1
OMP_WAIT_POLICY=passive ./build/speculate --out "$out" "$out/val.trace" > "$out/speculate.log" 2>&1
echo "$(( $(date +%s) - t0 ))" > "$out/time.txt"
echo "speculation: $out/speculate.log ($(cat "$out/time.txt") s)"
