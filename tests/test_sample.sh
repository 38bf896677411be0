#!/usr/bin/env bash
# End-to-end test of the `sample` program: a tiny checkpoint and tokenizer made by
# tests/test_generate_ckpt --make; the same seed gives the same text; usage, flags and
# every kind of bad input give a clear one-line error and a non-zero exit, never a crash.
set -u
BUILD=${BUILD:-build}
S=$BUILD/sample
H=$BUILD/tests/test_generate_ckpt
if [ ! -x "$S" ] || [ ! -x "$H" ]; then
  echo "SKIP sample end-to-end: $S or $H not built"
  expect_error "empty prompt without BOS" "prompt is empty" -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" --bos 0
# a prompt file, and a prompt longer than max_seq_len (48 tokens)
printf 'And God' > "$tmp/prompt.txt"
run pf -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -f "$tmp/prompt.txt" -n 30 -s 7 --stop 0
if [ "$rc" -eq 0 ] && cmp -s "$tmp/a.out" "$tmp/pf.out"; then pass "sample: --prompt-file = --prompt"; else fail "sample: --prompt-file = --prompt" "exit $rc"; fi
head -c 2000 /dev/zero | tr '\0' 'x' | sed 's/xx/x /g' > "$tmp/long.txt"
expect_error "prompt longer than max_seq_len" "max_seq_len" -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -f "$tmp/long.txt"
# a tokenizer with more tokens than the model's vocabulary
if "$H" --make "$tmp/small.ckpt" "$tmp/tok2.json" 200 > "$tmp/make2.log" 2>&1; then
  expect_error "tokenizer larger than the model's vocabulary" "not the model's tokenizer" -c "$tmp/small.ckpt" --tokenizer "$tmp/tok.json"
else
  fail "sample: make a small-vocabulary checkpoint" "$(tail -1 "$tmp/make2.log")"
fi
exit 0
fi
tmp=$(mktemp -d /tmp/moe_sample_test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }

if ! "$H" --make "$tmp/t.ckpt" "$tmp/tok.json" > "$tmp/make.log" 2>&1; then
  fail "sample: make a tiny checkpoint" "$(tail -1 "$tmp/make.log")"
  exit 1
fi

# run NAME ARGS...: stdout -> $tmp/NAME.out, stderr -> $tmp/NAME.err, status -> $rc
run() { local n=$1; shift; "$S" "$@" > "$tmp/$n.out" 2> "$tmp/$n.err"; rc=$?; }

# --- the same seed gives the same text ---------------------------------------------------
run a -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -p "And God" -n 30 -s 7 --stop 0
ra=$rc
run b -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -p "And God" -n 30 -s 7 --stop 0
rb=$rc
run c -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -p "And God" -n 30 -s 8 --stop 0
if [ "$ra" -ne 0 ] || [ "$rb" -ne 0 ]; then
  fail "sample: same seed, same text" "exit $ra/$rb: $(head -1 "$tmp/a.err")"
elif ! cmp -s "$tmp/a.out" "$tmp/b.out"; then
  fail "sample: same seed, same text" "two runs with seed 7 differ"
elif [ "$(wc -c < "$tmp/a.out")" -le 9 ]; then
  fail "sample: same seed, same text" "no text generated"
elif ! head -c 7 "$tmp/a.out" | grep -q "And God"; then
  fail "sample: same seed, same text" "the output does not start with the prompt"
elif cmp -s "$tmp/a.out" "$tmp/c.out"; then
  fail "sample: same seed, same text" "seeds 7 and 8 gave the same 30 tokens"
else
  pass "sample: same seed, same text; another seed, other text"
fi

# --- greedy is deterministic whatever the seed; the cache report is on stderr --------------
run g1 -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -t 0 -n 20 -s 1 --stop 0
run g2 -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -t 0 -n 20 -s 2 --stop 0
if [ "$rc" -eq 0 ] && cmp -s "$tmp/g1.out" "$tmp/g2.out"; then
  pass "sample: greedy ignores the seed"
else
  fail "sample: greedy ignores the seed" "outputs differ or exit $rc"
fi
if grep -q "MLA c_kv + k_pe 14 floats/layer" "$tmp/g1.err" && grep -q "plain MHA K + V 30 floats/layer" "$tmp/g1.err"; then
  pass "sample: cache size per token vs MHA on stderr"
else
  fail "sample: cache size per token vs MHA on stderr" "$(cat "$tmp/g1.err")"
fi
run q -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -n 5 -q
if [ "$rc" -eq 0 ] && [ ! -s "$tmp/q.err" ]; then pass "sample: -q is quiet"; else fail "sample: -q is quiet" "exit $rc"; fi

# --- a longer request than max_seq_len (48) is capped with a note --------------------------
run long -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -n 1000 --stop 0 -s 3
if [ "$rc" -eq 0 ] && grep -q "max_seq_len" "$tmp/long.err"; then
  pass "sample: length capped by max_seq_len"
else
  fail "sample: length capped by max_seq_len" "exit $rc: $(head -2 "$tmp/long.err")"
fi

# --- a run directory with a `latest` pointer -----------------------------------------------
mkdir -p "$tmp/run"
cp "$tmp/t.ckpt" "$tmp/run/step_00000007.ckpt"
echo step_00000007.ckpt > "$tmp/run/latest"
run dir -c "$tmp/run" --tokenizer "$tmp/tok.json" -p "And God" -n 30 -s 7 --stop 0
if [ "$rc" -eq 0 ] && cmp -s "$tmp/a.out" "$tmp/dir.out"; then
  pass "sample: run directory resolves to its latest checkpoint"
else
  fail "sample: run directory resolves to its latest checkpoint" "exit $rc: $(head -1 "$tmp/dir.err")"
fi

# --- usage ------------------------------------------------------------------------------
run h -h
missing=""
for f in --checkpoint --tokenizer --prompt --prompt-file --length --temperature --top-k --top-p --seed --bos --stop --quiet --help; do
  grep -q -- "$f" "$tmp/h.out" || missing="$missing $f"
done
if [ "$rc" -eq 0 ] && [ -z "$missing" ] && grep -q "\[0.8\]" "$tmp/h.out"; then
  pass "sample: -h lists every flag with its default"
else
  fail "sample: -h lists every flag with its default" "exit $rc, missing:$missing"
fi

# --- bad input: expect_error NAME PATTERN ARGS...  (non-zero exit, no crash, one clear line) --
expect_error() {
  local name=$1 pat=$2; shift 2
  run err "$@"
  if [ "$rc" -eq 0 ]; then fail "sample: $name" "exit 0"; return; fi
  if [ "$rc" -ge 126 ]; then fail "sample: $name" "crashed (exit $rc): $(tail -2 "$tmp/err.err")"; return; fi
  if ! grep -qi -- "$pat" "$tmp/err.err"; then fail "sample: $name" "message lacks '$pat': $(head -2 "$tmp/err.err")"; return; fi
  pass "sample: $name"
}
expect_error "unknown flag" "unknown flag" --bogus 1
expect_error "bad length" "--length\|-n" -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -n abc
expect_error "bad top-p" "top-p" -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" --top-p 1.5
expect_error "negative temperature" "temperature" -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -t -1
expect_error "flag without value" "needs a value" -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -p
expect_error "missing checkpoint" "$tmp/none.ckpt" -c "$tmp/none.ckpt" --tokenizer "$tmp/tok.json"
expect_error "missing tokenizer" "none.json" -c "$tmp/t.ckpt" --tokenizer "$tmp/none.json"
# a flipped payload byte, a truncated file, a file that is not a checkpoint
cp "$tmp/t.ckpt" "$tmp/flip.ckpt"
size=$(stat -c %s "$tmp/flip.ckpt")
off=$((size / 2))
byte=$(od -An -tu1 -j "$off" -N1 "$tmp/flip.ckpt" | tr -d ' ')
printf "$(printf '\\%03o' $(( (byte ^ 1) & 255 )))" | dd of="$tmp/flip.ckpt" bs=1 seek="$off" conv=notrunc status=none
expect_error "corrupt checkpoint (flipped byte)" "checksum" -c "$tmp/flip.ckpt" --tokenizer "$tmp/tok.json"
head -c $((size - 100)) "$tmp/t.ckpt" > "$tmp/trunc.ckpt"
expect_error "truncated checkpoint" "truncated" -c "$tmp/trunc.ckpt" --tokenizer "$tmp/tok.json"
expect_error "not a checkpoint" "magic\|truncated" -c "$tmp/tok.json" --tokenizer "$tmp/tok.json"
# a corrupt tokenizer: cut in half, and one that is not JSON
head -c 3000 "$tmp/tok.json" > "$tmp/half.json"
expect_error "truncated tokenizer.json" "half.json" -c "$tmp/t.ckpt" --tokenizer "$tmp/half.json"
expect_error "checkpoint given as tokenizer" "t.ckpt" -c "$tmp/t.ckpt" --tokenizer "$tmp/t.ckpt"
expect_error "missing prompt file" "nofile.txt" -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -f "$tmp/nofile.txt"
expect_error "empty prompt without BOS" "prompt is empty" -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" --bos 0
# a prompt file, and a prompt longer than max_seq_len (48 tokens)
printf 'And God' > "$tmp/prompt.txt"
run pf -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -f "$tmp/prompt.txt" -n 30 -s 7 --stop 0
if [ "$rc" -eq 0 ] && cmp -s "$tmp/a.out" "$tmp/pf.out"; then pass "sample: --prompt-file = --prompt"; else fail "sample: --prompt-file = --prompt" "exit $rc"; fi
head -c 2000 /dev/zero | tr '\0' 'x' | sed 's/xx/x /g' > "$tmp/long.txt"
expect_error "prompt longer than max_seq_len" "max_seq_len" -c "$tmp/t.ckpt" --tokenizer "$tmp/tok.json" -f "$tmp/long.txt"
# a tokenizer with more tokens than the model's vocabulary
if "$H" --make "$tmp/small.ckpt" "$tmp/tok2.json" 200 > "$tmp/make2.log" 2>&1; then
  expect_error "tokenizer larger than the model's vocabulary" "not the model's tokenizer" -c "$tmp/small.ckpt" --tokenizer "$tmp/tok.json"
else
  fail "sample: make a small-vocabulary checkpoint" "$(tail -1 "$tmp/make2.log")"
fi
exit 0
