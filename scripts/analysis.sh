#!/usr/bin/env bash
# Reproduces every run of ANALYSIS.md on the built-in corpus (make data), on the CPU.
#
#   scripts/analysis.sh            # all runs (skips those already FINISHED), then the tables
#   SCALE=smoke scripts/analysis.sh   # a few steps each: checks the pipeline end to end
#   ONLY="bal_bias_g1e-3 gate_softmax" scripts/analysis.sh   # a subset
#
# Design: one base run trains BASE_STEPS steps; every ablation starts from its checkpoint with
# --init-from (same parameters, same data order: the parent's seed, batch and sequence length)
# and trains ABL_STEPS more, differing in one option. Runs that change a tensor's shape (shared
# expert off, fine-grained experts, MTP) cannot start from the base checkpoint: they train from
# scratch for BASE_STEPS + ABL_STEPS with the same seed and data order, and are compared with
# the base configuration trained the same way (run "scratch_ref").
# Every run writes runs/an_NAME/ (logs, report) and its wall time to runs/an_NAME/time.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-full}
if [ "$SCALE" = smoke ]; then BASE_STEPS=4; ABL_STEPS=4; VAL_EVERY=4; VAL_BATCHES=2; B=4; T=64
else BASE_STEPS=${BASE_STEPS:-300}; ABL_STEPS=${ABL_STEPS:-900}; VAL_EVERY=${VAL_EVERY:-100}; VAL_BATCHES=${VAL_BATCHES:-16}; B=${B:-8}; T=${T:-128}
fi
TOTAL=$((BASE_STEPS + ABL_STEPS))
ONLY=${ONLY:-}
make -s build/train build/report >/dev/null
make -s data >/dev/null
# the study's model: 4 blocks (1 dense), 8 routed experts of width 192 + 1 shared, top-2
MODEL=(-C 192 -L 4 --n-dense-layers 1 -H 4 --kv-lora-rank 96 --qk-nope-dim 32 --qk-rope-dim 16 --v-head-dim 48
       --inter-dim 512 --moe-inter-dim 192 -E 8 --n-shared-experts 1 -K 2 --max-seq-len "$T")
RUN=(-b "$B" -t "$T" --lr 3e-3 --min-lr 3e-4 --warmup-steps 30 --val-every "$VAL_EVERY" --val-batches "$VAL_BATCHES"
     --sample-every 0 --ckpt-every "$BASE_STEPS" --keep-ckpts 2 --report-every 0 --log-every 100)

want() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }
run() {  # name, flags...
  local name=$1; shift
  want "$name" || return 0
  if [ -e "runs/an_$name/FINISHED" ]; then echo "== $name: done already"; return 0; fi
  echo "== $name: $*"
  local t0=$(date +%s)
  ./build/train --name "an_$name" --overwrite "$@" > "/tmp/an_$name.log" 2>&1 || { echo "run $name failed:"; tail -5 "/tmp/an_$name.log"; return 1; }
  echo "$(( $(date +%s) - t0 ))" > "runs/an_$name/time.txt"
  ./build/report -q "runs/an_$name" >/dev/null 2>&1 || true
  echo "   $(grep -o '"val_loss": [0-9.]*' runs/an_$name/train.jsonl | tail -1) in $(cat runs/an_$name/time.txt) s"
}
BASE=checkpoints/an_base/step_$(printf %08d "$BASE_STEPS").ckpt
# 0. the shared early checkpoint (loss-free bias, gamma 1e-3, the DeepSeek-V3 default); always run
ONLY_SAVE=$ONLY; ONLY=""
run base "${MODEL[@]}" "${RUN[@]}" -x "$BASE_STEPS" --balance bias --seed 1
ONLY=$ONLY_SAVE
# ablations validate every ABL_VAL_EVERY steps on ABL_VAL_BATCHES batches (the values that
# produced ANALYSIS.md: 50 and 8, the trainer's defaults); samples every 100 steps, reports every 50
ABL_VAL_EVERY=${ABL_VAL_EVERY:-50}; ABL_VAL_BATCHES=${ABL_VAL_BATCHES:-8}
[ "$SCALE" = smoke ] && { ABL_VAL_EVERY=4; ABL_VAL_BATCHES=2; }
abl() {  # name, flags... (from the base checkpoint; the schedule continues without warmup)
  local name=$1; shift
  run "$name" --init-from "$BASE" --keep-optimizer -x "$ABL_STEPS" --warmup-steps 0 --ckpt-every "$ABL_STEPS" \
    --val-every "$ABL_VAL_EVERY" --val-batches "$ABL_VAL_BATCHES" --sample-every 100 --report-every 50 "$@"
}
# 1. balancing (two seeds for the main comparison: seed 2 changes the data order after the base)
for seed in 1 2; do
  s=""; [ $seed = 2 ] && s="_s2"
  abl "bal_none$s" --balance none --seed $seed
  abl "bal_aux1e-2$s" --balance aux --aux-alpha 1e-2 --seed $seed
  abl "bal_bias_g1e-3$s" --balance bias --bias-update-speed 1e-3 --seed $seed
  abl "bal_bias_seqaux$s" --balance bias+seqaux --aux-alpha 1e-4 --seed $seed
done
abl bal_aux1e-3 --balance aux --aux-alpha 1e-3
abl bal_bias_g1e-4 --balance bias --bias-update-speed 1e-4
abl bal_bias_g1e-2 --balance bias --bias-update-speed 1e-2
# 2. gate: softmax (DeepSeek-MoE 16B) with the classic auxiliary loss vs sigmoid + bias
abl gate_softmax_aux --score-func softmax --balance aux --aux-alpha 1e-2
abl gate_softmax_bias --score-func softmax --balance bias
# 5. collapse provocation: no balancing with a softmax gate and a high learning rate; then the fix
abl collapse_softmax_none_hilr --score-func softmax --balance none --lr 1e-2 --min-lr 1e-2
abl collapse_fix_bias_g1e-2 --score-func softmax --balance bias --bias-update-speed 1e-2 --lr 1e-2 --min-lr 1e-2
# 3-4. shape changes: from scratch, same seed and data order, TOTAL steps
S=("${RUN[@]}" -x "$TOTAL" --ckpt-every "$TOTAL" --balance bias --seed 1)
run scratch_ref "${MODEL[@]}" "${S[@]}"
# shared expert off, one more routed expert active (DeepSeekMoE's ablation): top-3 of 8, no shared
run scratch_noshared "${MODEL[@]}" "${S[@]}" --n-shared-experts 0 -K 3
# fine-grained segmentation at equal active parameters: 16 experts of width 96, top-4
run scratch_fine16 "${MODEL[@]}" "${S[@]}" -E 16 --moe-inter-dim 96 -K 4
run scratch_mtp "${MODEL[@]}" "${S[@]}" --mtp-depth 1 --mtp-lambda 0.3
# tables and figures
python3 scripts/analysis_tables.py runs > runs/analysis_tables.md
./build/report -q --compare runs/an_compare_balance runs/an_bal_none runs/an_bal_aux1e-2 runs/an_bal_bias_g1e-3 runs/an_bal_bias_seqaux >/dev/null 2>&1 || true
echo "tables: runs/analysis_tables.md"
