#!/usr/bin/env bash
# The report program's command line: -h lists every flag, unknown flags and bad values are
# rejected with one line, a missing run folder is a one-line error, a synthetic run and a
# comparison are written.
set -u
BUILD=${BUILD:-build}
report="$BUILD/report"
synth="$BUILD/tests/test_plots"
out="$BUILD/test-report-cli"
if [ ! -x "$report" ] || [ ! -x "$synth" ]; then
  echo "FAIL report_cli: $report or $synth not built"
  exit 1
fi
rm -rf "$out"; mkdir -p "$out"
check() {  # name, condition command...
  local name=$1; shift
  if "$@"; then echo "PASS $name"; else echo "FAIL $name"; fi
}
help=$("$report" -h); rc=$?
check report_cli_help bash -c '[ '$rc' -eq 0 ] && for f in --window --layer --share-threshold --entropy-frac --patience --compare --time -q; do grep -q -- "$f" <<<"$0" || exit 1; done; grep -q "default 100" <<<"$0"' "$help"
err=$("$report" --bogus x 2>&1); rc=$?
check report_cli_unknown_flag bash -c '[ '$rc' -ne 0 ] && [ $(wc -l <<<"$0") -eq 1 ] && grep -q "unknown option" <<<"$0"' "$err"
err=$("$report" --window abc x 2>&1); rc=$?
check report_cli_bad_value bash -c '[ '$rc' -ne 0 ] && grep -q "bad value" <<<"$0"' "$err"
err=$("$report" --window 2>&1); rc=$?
check report_cli_missing_value bash -c '[ '$rc' -ne 0 ] && grep -q "needs a value" <<<"$0"' "$err"
err=$("$report" "$out/does-not-exist" 2>&1); rc=$?
check report_cli_missing_dir bash -c '[ '$rc' -ne 0 ] && [ $(wc -l <<<"$0") -eq 1 ] && grep -q "does-not-exist" <<<"$0"' "$err"
"$synth" --write-run "$out/a" && "$synth" --write-run "$out/b" 120 2 8 2
"$report" -q --window 50 --layer 2 "$out/a" >/dev/null 2>&1; rc=$?
check report_cli_run bash -c '[ '$rc' -eq 0 ] && [ -s "$0/report.html" ] && [ -s "$0/load_heatmap.png" ] && grep -q "last 50 steps" "$0/report.html"' "$out/a"
"$report" -q --compare "$out/cmp" "$out/a" "$out/b" >/dev/null 2>&1; rc=$?
check report_cli_compare bash -c '[ '$rc' -eq 0 ] && [ -s "$0/compare.html" ] && [ -s "$0/compare_load.png" ]' "$out/cmp"
err=$("$report" --compare "$out/cmp2" "$out/a" "$out/nope" 2>&1); rc=$?
check report_cli_compare_missing bash -c '[ '$rc' -ne 0 ] && grep -q "nope" <<<"$0"' "$err"
