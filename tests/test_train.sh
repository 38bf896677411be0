#!/usr/bin/env bash
# End-to-end tests of the `train` program on synthetic shards: learning, exact resume for
# every balancing mode and with MTP, --init-from ablations, NaN handling, bad input.
set -u
BUILD=${BUILD:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TRAIN="$ROOT/$BUILD/train"
GEN="$ROOT/$BUILD/gen_shards"
W=$(mktemp -d /tmp/moe_train_test.XXXXXX)
trap 'rm -rf "$W"' EXIT
cd "$W"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }

"$GEN" train.bin 64 120000 1 4 2 && "$GEN" val.bin 64 12000 2 4 2 || { fail setup "gen_shards failed"; exit 1; }
TINY=(--train-data train.bin --val-data val.bin -C 48 -L 3 -H 2 --kv-lora-rank 24 --qk-nope-dim 12 --qk-rope-dim 8
      --v-head-dim 12 --inter-dim 96 --moe-inter-dim 32 -E 6 -K 2 -b 4 -t 48 --report-every 0 --sample-every 0
      --log-every 1000)

# 1. learning: validation loss well below the unigram entropy ln(64) = 4.16 (the chain's
#    conditional entropy is ln 4 = 1.39)
if "$TRAIN" "${TINY[@]}" --name learn -x 120 --lr 5e-3 --val-every 120 > learn.log 2>&1; then
  vl=$(grep -o '"val_loss": [0-9.]*' runs/learn/train.jsonl | tail -1 | awk '{print $2}')
  if awk -v v="$vl" 'BEGIN{exit !(v < 2.8)}'; then pass "train_learns (val loss $vl < 2.8, unigram 4.16)";
  else fail train_learns "val loss $vl not below 2.8"; fi
  for f in train.jsonl routing.jsonl run.json report.html FINISHED; do
    [ -e "runs/learn/$f" ] || fail train_outputs "runs/learn/$f missing"
  done
  n=$(grep -c '"loss"' runs/learn/train.jsonl); r=$(wc -l < runs/learn/routing.jsonl)
  if [ "$n" -eq 120 ] && [ "$r" -eq 120 ] && grep -q '"maxvio"' runs/learn/routing.jsonl \
     && grep -q '"entropy_uniform"' runs/learn/routing.jsonl && grep -q '"bias"' runs/learn/routing.jsonl; then
    pass train_logs_every_step
  else fail train_logs_every_step "train.jsonl $n lines, routing.jsonl $r lines"; fi
else
  fail train_learns "train exited non-zero: $(tail -3 learn.log)"
fi

# 2. exact resume: 2N steps straight == N steps, stop, resume, N more (parameters, AdamW
#    state, biases and logged losses, bit for bit), for every balancing mode and with MTP
strip() { sed -E 's/, "tokens_per_s": [^,]*, "ms": [^,]*//; s/, "mem_mb": [^,}]*//; s/, "gflops": [^,}]*//' "$1"; }
for mode in bias none aux seqaux bias+seqaux mtp; do
  extra=(--balance "$mode" --aux-alpha 0.01)
  [ "$mode" = mtp ] && extra=(--balance bias --mtp-depth 1)
  tag=${mode//+/_}
  "$TRAIN" "${TINY[@]}" "${extra[@]}" --name "s_$tag" -x 16 --val-every 8 --ckpt-every 8 > "s_$tag.log" 2>&1 &&
  "$TRAIN" "${TINY[@]}" "${extra[@]}" --name "r_$tag" -x 16 --val-every 8 --ckpt-every 8 --stop-after 8 > "r1_$tag.log" 2>&1 &&
  "$TRAIN" --resume "r_$tag" > "r2_$tag.log" 2>&1
  if [ $? -ne 0 ]; then fail "resume_exact_$tag" "a run failed: $(tail -n 2 r2_$tag.log s_$tag.log)"; continue; fi
  a=checkpoints/s_$tag/step_00000016.ckpt; b=checkpoints/r_$tag/step_00000016.ckpt
  # the files differ only in the run name: compare everything after the header's name field
  if ! cmp -s <(strip "runs/s_$tag/train.jsonl") <(strip "runs/r_$tag/train.jsonl"); then
    fail "resume_exact_$tag" "logged losses differ"
  elif ! cmp -s runs/s_$tag/routing.jsonl runs/r_$tag/routing.jsonl; then
    fail "resume_exact_$tag" "routing logs differ"
  elif ! "$ROOT/$BUILD/ckpt_compare" "$a" "$b" > cmp_$tag.log 2>&1; then
    fail "resume_exact_$tag" "checkpoints differ: $(cat cmp_$tag.log)"
  else pass "resume_exact_$tag"; fi
done

# 3. --init-from: an allowed override starts from the parent's parameters; a shape change
#    is refused naming the field
"$TRAIN" "${TINY[@]}" --name parent -x 30 --lr 5e-3 --val-every 0 --ckpt-every 30 > parent.log 2>&1
if "$TRAIN" "${TINY[@]}" --init-from parent --name child --balance aux --aux-alpha 0.01 -K 3 -x 1 --val-every 0 > child.log 2>&1 \
   && grep -q '"parent"' runs/child/run.json && grep -q '"balance": "aux"' runs/child/run.json; then
  # the child's first loss must be far below the fresh-model loss (it starts from the trained parent)
  l0=$(grep -o '"loss": [0-9.]*' runs/parent/train.jsonl | head -1 | awk '{print $2}')
  l1=$(grep -o '"loss": [0-9.]*' runs/child/train.jsonl | head -1 | awk '{print $2}')
  if awk -v a="$l0" -v b="$l1" 'BEGIN{exit !(b < a - 0.3)}'; then pass "init_from_override (first loss $l1 < fresh $l0)";
  else fail init_from_override "child first loss $l1 not below the fresh model's $l0"; fi
else fail init_from_override "$(tail -2 child.log)"; fi
if "$TRAIN" "${TINY[@]}" --init-from parent --name child2 -C 64 -x 1 > child2.log 2>&1; then
  fail init_from_shape_refused "a shape change was accepted"
elif grep -q -- "--dim" child2.log; then pass init_from_shape_refused
else fail init_from_shape_refused "message does not name the field: $(cat child2.log)"; fi

# 4. NaN/inf: steps are skipped (parameters unchanged) and the run stops cleanly after a few
if "$TRAIN" "${TINY[@]}" --name nan -x 30 --lr 1e30 --warmup-steps 0 --grad-clip 0 --val-every 0 > nan.log 2>&1; then
  fail nan_stops "a diverging run exited 0"
elif grep -q "not finite" nan.log && grep -q "non-finite steps in a row" nan.log; then pass nan_stops
else fail nan_stops "$(tail -3 nan.log)"; fi

# 5. bad input: a clear one-line error and a non-zero exit, never a crash (exit code >= 128)
bad() {  # name, expected text, args...
  local name=$1 text=$2; shift 2
  "$TRAIN" "$@" > "bad_$name.log" 2>&1; local rc=$?
  if [ $rc -eq 0 ]; then fail "bad_input_$name" "exit 0";
  elif [ $rc -ge 128 ]; then fail "bad_input_$name" "crashed (status $rc)";
  elif ! grep -qi -- "$text" "bad_$name.log"; then fail "bad_input_$name" "message lacks '$text': $(head -2 bad_$name.log)";
  else pass "bad_input_$name"; fi
}
: > empty.bin
head -c 100 train.bin > trunc.bin
cp train.bin magic.bin; printf 'XXXXXXXX' | dd of=magic.bin bs=1 count=8 conv=notrunc 2>/dev/null
V=(--val-data "" -x 1)
bad missing_shard "nothere.bin" "${TINY[@]}" "${V[@]}" --train-data nothere.bin --name b1
bad empty_shard "empty.bin" "${TINY[@]}" "${V[@]}" --train-data empty.bin --name b2
bad truncated_shard "trunc.bin" "${TINY[@]}" "${V[@]}" --train-data trunc.bin --name b3
bad bad_magic "magic.bin" "${TINY[@]}" "${V[@]}" --train-data magic.bin --name b4
bad seq_too_long "max_seq_len" "${TINY[@]}" "${V[@]}" -t 64 --max-seq-len 32 --name b5
bad top_k "top_k" "${TINY[@]}" "${V[@]}" -K 7 --name b6
bad groups_divide "n_expert_groups" "${TINY[@]}" "${V[@]}" --n-expert-groups 4 --name b7
bad dense_layers "n_dense_layers" "${TINY[@]}" "${V[@]}" --n-dense-layers 4 --name b8
bad zero_dim "dim" "${TINY[@]}" "${V[@]}" -C 0 --name b9
bad negative_heads "n_heads" "${TINY[@]}" "${V[@]}" -H -2 --name b10
bad odd_rope "qk_rope_dim" "${TINY[@]}" "${V[@]}" --qk-rope-dim 7 --name b11
bad vocab_small "vocab" "${TINY[@]}" "${V[@]}" --vocab-size 10 --name b12
bad unknown_flag "unknown flag" --no-such-flag 3
bad bad_number "expects an integer" -b two
bad bad_balance "balance" "${TINY[@]}" --balance lossfree
bad existing_run "already exists" "${TINY[@]}" "${V[@]}" --name learn
bad resume_missing "nosuchrun" --resume nosuchrun

# 6. Ctrl-C: the step finishes, a checkpoint is saved, exit 0, and the printed command resumes
"$TRAIN" "${TINY[@]}" --name sigint -x 100000 --val-every 0 --ckpt-every 0 --log-every 1 > sigint.log 2>&1 &
pid=$!
for i in $(seq 1 200); do grep -q '^step +3/' sigint.log && break; sleep 0.1; done
kill -INT $pid; wait $pid; rc=$?
if [ $rc -ne 0 ]; then fail sigint_saves_and_resumes "exit status $rc after SIGINT: $(tail -n 3 sigint.log)"
else
  cmd=$(grep -o 'to continue: [^ ]* --resume [^ ]*' sigint.log | sed 's/^to continue: //')
  last=$(grep -o '"step": [0-9]*, "loss"' runs/sigint/train.jsonl | tail -1 | grep -o '[0-9]*')
  if [ -z "$cmd" ] || ! ls checkpoints/sigint/step_*.ckpt >/dev/null 2>&1; then
    fail sigint_saves_and_resumes "no checkpoint or no resume command printed: $(tail -n 3 sigint.log)"
  elif eval "$cmd --max-steps $((last + 2))" > sigint2.log 2>&1 && grep -q "resumed from .* at step $last" sigint2.log; then
    pass "sigint_saves_and_resumes (stopped at step $last, resumed)"
  else fail sigint_saves_and_resumes "resume failed: $(tail -n 3 sigint2.log)"; fi
fi
