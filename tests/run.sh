#!/usr/bin/env bash
# Runs every test program and shell test, counts PASS/FAIL/SKIP lines, prints the closing
# line "N passed, N failed, N skipped". Usage: tests/run.sh BUILD_DIR prog... -- script...
# Each program runs with a time limit; a crash or non-zero exit without a FAIL line counts
# as one failure.
set -u
build=$1; shift
progs=(); scripts=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; scripts=("$@"); break; fi
  progs+=("$1"); shift
done
pass=0; fail=0; skip=0
logdir="$build/test-logs"; mkdir -p "$logdir"
limit=${TEST_TIMEOUT:-900}
run_one() {  # name, command...
  local name=$1; shift
  local log="$logdir/$(basename "$name").log"
  local t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  local t1=$(date +%s.%N)
  local p f s
  p=$(grep -c '^PASS ' "$log"); f=$(grep -c '^FAIL ' "$log"); s=$(grep -c '^SKIP ' "$log")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1
    echo "FAIL $name: exited with status $rc without a FAIL line (crash or timeout?); last lines:" >> "$log"
  fi
  pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
  printf '%-40s %3d passed %3d failed %3d skipped  %6.1fs\n' "$(basename "$name")" "$p" "$f" "$s" "$(echo "$t1 - $t0" | bc)"
  if [ "$f" -ne 0 ]; then grep -E '^(FAIL|  \[)' "$log" | head -40 | sed 's/^/    /'; tail -5 "$log" | sed 's/^/    | /'; fi
  grep '^SKIP ' "$log" | sed 's/^/    /'
}
for p in "${progs[@]}"; do run_one "$p" "$p"; done
for s in "${scripts[@]}"; do BUILD="$build" run_one "$s" bash "$s"; done
echo
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
