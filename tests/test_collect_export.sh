#!/usr/bin/env bash
# A model trained here -> `export` (HF deepseek_v3 folder) -> `collect` over token shards ->
# the trace checked against a recomputed forward. Uses the train and gen_shards programs of
# other modules; SKIPs when they are not built.
set -u
BUILD=${BUILD:-build}
ROOT=$(pwd)
for b in train gen_shards export collect tests/test_pretrained; do
  if [ ! -x "$ROOT/$BUILD/$b" ]; then echo "SKIP collect_export: $BUILD/$b not built"; exit 0; fi
done
tmp=$(mktemp -d /tmp/test_collect_export.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
"$ROOT/$BUILD/gen_shards" train.bin 64 20000 1 4 2 > /dev/null && "$ROOT/$BUILD/gen_shards" val.bin 64 4000 2 4 2 > /dev/null \
  || { fail collect_export_setup "gen_shards failed"; exit 0; }
if ! "$ROOT/$BUILD/train" --train-data train.bin --val-data "" -C 32 -L 3 -H 2 --kv-lora-rank 16 --qk-nope-dim 8 \
     --qk-rope-dim 8 --v-head-dim 8 --inter-dim 64 --moe-inter-dim 16 -E 8 -K 2 --n-expert-groups 2 -b 4 -t 32 -x 6 \
     --report-every 0 --sample-every 0 --log-every 1000 --ckpt-every 0 --name t --runs-dir runs --ckpt-dir ckpts \
     --tokenizer none > train.log 2>&1; then
  fail collect_export_train "train failed: $(tail -2 train.log | tr '\n' ' ')"; exit 0
fi
if "$ROOT/$BUILD/export" --ckpt ckpts/t --out exported --tokenizer none > export.log 2>&1 && [ -f exported/config.json ]; then
  pass collect_export_checkpoint_to_hf
else
  fail collect_export_checkpoint_to_hf "$(tail -1 export.log)"; exit 0
fi
for q in none nf4; do
  if "$ROOT/$BUILD/collect" --model exported --data "val.bin" --n 5 --max-len 32 --batch 4 --quant $q --bos 0 \
       --out "t_$q.trace" --quiet > "collect_$q.log" 2>&1 && grep -q "expert diversity" "collect_$q.log"; then
    pass "collect_export_collect_$q"
  else
    fail "collect_export_collect_$q" "$(tail -2 "collect_$q.log" | tr '\n' ' ')"; continue
  fi
  if "$ROOT/$BUILD/tests/test_pretrained" --check-trace "t_$q.trace" exported $q > "check_$q.log" 2>&1; then
    pass "collect_export_trace_matches_forward_$q"
  else
    fail "collect_export_trace_matches_forward_$q" "$(grep -E '^(FAIL|  )' "check_$q.log" | head -3 | tr '\n' ' ')"
  fi
done
exit 0
