#!/usr/bin/env bash
# End-to-end tests of the `speculate` program on small synthetic traces: the full run (table,
# metrics.tsv, cache.tsv, .spec files, charts), reading a .trace file, and clear one-line errors
# for a truncated trace, a speculator of another model, a speculator trained on other splits,
# unknown flags. Prints PASS/FAIL/SKIP lines.
set -u
BUILD=${BUILD:-build}
bin="$BUILD/speculate"
if [ ! -x "$bin" ]; then echo "FAIL speculate_binary: $bin not built"; exit 1; fi
d=$(mktemp -d /tmp/moe_speculate_XXXXXX)
trap 'rm -rf "$d"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
small=(--syn-experts 16 --syn-topk 2 --syn-layers 4 --syn-seqs 60 --hidden 16 --tok-buckets 256 --epochs 3
       --cache-tokens 400 --scenario nf4:8)

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }

# 1. full run on a synthetic trace, saving the trace for the next tests
if "$bin" --synthetic "${small[@]}" --save-trace "$d/a.trace" --out "$d/out" > "$d/run1.log" 2>&1; then
  missing=""
  for m in random frequent transition prev-token gate-reuse oracle mlp-bce+rank mlp-listwise LRU "LRU+speculator" \
           "LRU+best-baseline" "Belady"; do
    grep -q -- "$m" "$d/run1.log" || missing="$missing $m"
  done
  for f in metrics.tsv cache.tsv spec_bce_rank.spec spec_listwise.spec recall_per_layer.png hit_rate_vs_cache.png; do
    [ -s "$d/out/$f" ] || missing="$missing $f"
  done
  # the oracle row must read 1.0000 everywhere
  orc=$(grep -E '^oracle +all' "$d/run1.log" | grep -c '1.0000 (.*1.0000 (.*1.0000 (.*1.0000 (')
  [ "$orc" = 1 ] || missing="$missing oracle=1"
  if [ -z "$missing" ]; then pass speculate_end_to_end_synthetic; else fail speculate_end_to_end_synthetic "missing:$missing"; fi
else
  fail speculate_end_to_end_synthetic "exit $? ($(tail -1 "$d/run1.log"))"
fi

# 2. the saved trace file, with the saved speculators (no training)
if [ -s "$d/a.trace" ] && "$bin" "$d/a.trace" --no-train --load "$d/out/spec_bce_rank.spec" \
     --load "$d/out/spec_listwise.spec" --no-plots --cache-tokens 200 --scenario nf4:8 --out "$d/out2" > "$d/run2.log" 2>&1 &&
   grep -q '^mlp-bce+rank' "$d/run2.log" && grep -q '^mlp-listwise' "$d/run2.log" && grep -q '^transition' "$d/run2.log"; then
  pass speculate_reads_trace_and_spec_files
else
  fail speculate_reads_trace_and_spec_files "$(tail -2 "$d/run2.log" 2>/dev/null)"
fi

# expects: name, log file, exit status, pattern the one error line must contain
check_error() {
  local name=$1 log=$2 rc=$3 pat=$4
  local lines; lines=$(grep -c 'error' "$log")
  if [ "$rc" -ne 0 ] && grep -q -- "$pat" "$log" && [ "$lines" -eq 1 ]; then pass "$name"
  else fail "$name" "rc $rc, error lines $lines: $(tail -1 "$log")"; fi
}

# 3. truncated trace
head -c -9 "$d/a.trace" > "$d/trunc.trace"
"$bin" "$d/trunc.trace" --no-train --no-plots --out "$d/o3" > "$d/run3.log" 2>&1
check_error speculate_truncated_trace_clear_error "$d/run3.log" $? "trunc.trace: truncated"

# 4. a speculator of another model (32 experts) is refused
"$bin" --synthetic --syn-experts 32 --syn-topk 2 --syn-layers 4 --syn-seqs 20 --no-train --no-plots \
  --save-trace "$d/b.trace" --cache-tokens 50 --scenario nf4:8 --out "$d/o4a" > /dev/null 2>&1
"$bin" "$d/b.trace" --no-train --load "$d/out/spec_bce_rank.spec" --no-plots --out "$d/o4" > "$d/run4.log" 2>&1
check_error speculate_refuses_other_models_spec "$d/run4.log" $? "refusing"

# 5. a speculator trained with other splits would leak test sequences: refused
"$bin" "$d/a.trace" --seed 7 --no-train --load "$d/out/spec_bce_rank.spec" --no-plots --out "$d/o5" > "$d/run5.log" 2>&1
check_error speculate_refuses_spec_of_other_splits "$d/run5.log" $? "split seed"

# 6. flags
"$bin" -h > "$d/help.log" 2>&1; rc=$?
nflags=$(grep -c -- '^  -' "$d/help.log")
"$bin" "$d/a.trace" --frobnicate > "$d/run6.log" 2>&1
rc6=$?
if [ $rc -eq 0 ] && [ "$nflags" -ge 30 ] && grep -q default "$d/help.log" && [ $rc6 -ne 0 ] &&
   grep -q "unknown flag '--frobnicate'" "$d/run6.log"; then
  pass speculate_help_and_unknown_flag
else
  fail speculate_help_and_unknown_flag "help rc $rc flags $nflags, unknown rc $rc6"
fi

# 7. missing file
"$bin" "$d/nope.trace" --no-plots --out "$d/o7" > "$d/run7.log" 2>&1
check_error speculate_missing_trace_clear_error "$d/run7.log" $? "nope.trace: cannot open"
