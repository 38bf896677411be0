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
[ "$fails" -eq 0 ]
