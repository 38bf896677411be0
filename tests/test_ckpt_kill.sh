#!/usr/bin/env bash
# SIGKILL while a checkpoint is being written: the previous checkpoint must still resolve and
# load bit-exactly, and the next save must work and clean up the partial file.
# Uses the test hook MOE_CKPT_PAUSE_MS (ckpt_save sleeps halfway through the tmp file after
# printing "ckpt: pausing ...") and the helper modes of build/tests/test_checkpoint.
set -u
BUILD=${BUILD:-build}
bin="$BUILD/tests/test_checkpoint"
name=ckpt_kill
if [ ! -x "$bin" ]; then
  echo "FAIL $name: $bin is not built (make BUILD=$BUILD $bin)"
  exit 1
fi
tmp=$(mktemp -d /tmp/moe_ckpt_kill_XXXXXX)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
run="$tmp/run"
fails=0
fail() { echo "FAIL $1: $2"; fails=$((fails + 1)); }

# 1. a valid checkpoint of step 1
if ! "$bin" --save-into "$run" 1 > "$tmp/out1" 2>&1; then
  fail ckpt_kill_setup "saving step 1 failed: $(head -c 300 "$tmp/out1")"
  exit 1
fi
echo "PASS ckpt_kill_setup"

# 2. start saving step 2 with a long pause mid-write, kill -9 it during the pause
MOE_CKPT_PAUSE_MS=20000 "$bin" --save-into "$run" 2 > /dev/null 2> "$tmp/err2" &
pid=$!
paused=0
for _ in $(seq 1 400); do  # up to ~20 s (slow under sanitizers)
  if grep -q "ckpt: pausing" "$tmp/err2" 2>/dev/null; then paused=1; break; fi
  if ! kill -0 "$pid" 2>/dev/null; then break; fi
  sleep 0.05
done
if [ "$paused" -ne 1 ]; then
  fail ckpt_kill_pause "the writer never reached the pause hook: $(head -c 300 "$tmp/err2")"
  exit 1
fi
kill -9 "$pid"
wait "$pid" 2>/dev/null
rc=$?
pid=""
if [ "$rc" -eq 137 ]; then echo "PASS ckpt_kill_pause"; else fail ckpt_kill_pause "writer exit status $rc, expected 137 (SIGKILL)"; fi

# 3. the half-written file exists only under its tmp name; `latest` still names step 1
if [ -f "$run/step_00000002.ckpt.tmp" ] && [ ! -e "$run/step_00000002.ckpt" ] &&
   [ "$(cat "$run/latest")" = "step_00000001.ckpt" ]; then
  echo "PASS ckpt_kill_no_partial_under_final_name"
else
  fail ckpt_kill_no_partial_under_final_name "directory: $(ls "$run" | tr '\n' ' ') latest: $(cat "$run/latest" 2>&1)"
fi

# 4. the previous checkpoint resolves and loads bit-exactly
if "$bin" --check "$run" 1 > "$tmp/out3" 2>&1 && grep -q "step_00000001.ckpt" "$tmp/out3"; then
  echo "PASS ckpt_kill_previous_loads"
else
  fail ckpt_kill_previous_loads "$(head -c 400 "$tmp/out3")"
fi

# 5. saving again works, removes the stale tmp file, and the new checkpoint is the one resumed
if "$bin" --save-into "$run" 2 > "$tmp/out4" 2>&1 && [ ! -e "$run/step_00000002.ckpt.tmp" ] &&
   "$bin" --check "$run" 2 > "$tmp/out5" 2>&1 && grep -q "step_00000002.ckpt" "$tmp/out5"; then
  echo "PASS ckpt_kill_save_after_crash"
else
  fail ckpt_kill_save_after_crash "$(head -c 300 "$tmp/out4") $(head -c 300 "$tmp/out5" 2>/dev/null)"
fi

# 6. the real trainer: kill -9 while `train --resume` writes its step-8 checkpoint; the step-4
#    checkpoint must still resume, and the finished run must equal a straight 8-step run bit
#    for bit (parameters, AdamW state, biases, train state). The resumes repeat --val-every 0
#    --ckpt-every 4: `train --resume` does not restore those two from the original run.
TRAIN="$BUILD/train"; GEN="$BUILD/gen_shards"; CMP="$BUILD/ckpt_compare"
if [ ! -x "$TRAIN" ] || [ ! -x "$GEN" ] || [ ! -x "$CMP" ]; then
  echo "SKIP ckpt_kill_trainer: $TRAIN, $GEN or $CMP is not built"
  [ "$fails" -eq 0 ]
  exit
fi
TRAIN=$(cd "$(dirname "$TRAIN")" && pwd)/train; GEN=$(cd "$(dirname "$GEN")" && pwd)/gen_shards
CMP=$(cd "$(dirname "$CMP")" && pwd)/ckpt_compare
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
(
  cd "$tmp" || exit 1
  "$GEN" train.bin 64 40000 1 4 2 > gen.log 2>&1 && "$GEN" val.bin 64 4000 2 4 2 >> gen.log 2>&1 ||
    { echo "FAIL ckpt_kill_trainer: gen_shards failed: $(tail -2 gen.log)"; exit 1; }
  TINY=(--train-data train.bin --val-data val.bin -C 32 -L 2 -H 2 --kv-lora-rank 16 --qk-nope-dim 8 --qk-rope-dim 4
        --v-head-dim 8 --inter-dim 64 --moe-inter-dim 16 -E 4 -K 2 -b 2 -t 32 --report-every 0 --sample-every 0
        --log-every 1000 --val-every 0 --ckpt-every 4 -x 8)
  "$TRAIN" "${TINY[@]}" --name straight > straight.log 2>&1 ||
    { echo "FAIL ckpt_kill_trainer: straight run failed: $(tail -2 straight.log)"; exit 1; }
  "$TRAIN" "${TINY[@]}" --name k --stop-after 4 > k1.log 2>&1 ||
    { echo "FAIL ckpt_kill_trainer: first half failed: $(tail -2 k1.log)"; exit 1; }
  MOE_CKPT_PAUSE_MS=60000 "$TRAIN" --resume k --val-every 0 --ckpt-every 4 > k2.log 2>&1 &
  tp=$!
  ok=0
  for _ in $(seq 1 1200); do  # up to ~60 s
    if grep -q "ckpt: pausing" k2.log 2>/dev/null; then ok=1; break; fi
    kill -0 "$tp" 2>/dev/null || break
    sleep 0.05
  done
  kill -9 "$tp" 2>/dev/null
  wait "$tp" 2>/dev/null
  if [ "$ok" -ne 1 ]; then echo "FAIL ckpt_kill_trainer: the trainer never reached the pause hook: $(tail -3 k2.log)"; exit 1; fi
  if [ -e checkpoints/k/step_00000008.ckpt ] || [ "$(cat checkpoints/k/latest)" != "step_00000004.ckpt" ]; then
    echo "FAIL ckpt_kill_trainer: after the kill: $(ls checkpoints/k | tr '\n' ' '), latest $(cat checkpoints/k/latest)"
    exit 1
  fi
  "$TRAIN" --resume k --val-every 0 --ckpt-every 4 > k3.log 2>&1 ||
    { echo "FAIL ckpt_kill_trainer: resume after the kill failed: $(tail -3 k3.log)"; exit 1; }
  if ! grep -q "step_00000004.ckpt" k3.log; then
    echo "FAIL ckpt_kill_trainer: did not resume from step 4: $(grep -i resum k3.log | head -2)"; exit 1
  fi
  if ! "$CMP" checkpoints/straight/step_00000008.ckpt checkpoints/k/step_00000008.ckpt > cmp.log 2>&1; then
    echo "FAIL ckpt_kill_trainer: killed-and-resumed run differs from the straight run: $(head -c 300 cmp.log)"; exit 1
  fi
  echo "PASS ckpt_kill_trainer"
) || fails=$((fails + 1))
[ "$fails" -eq 0 ]
