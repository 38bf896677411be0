#!/usr/bin/env bash
# The `tokenizer` command line: usage, bad flags and files, train -> encode -> decode round trip of
# a file holding NUL bytes and invalid UTF-8.
set -u
BUILD=${BUILD:-build}
BPE=$BUILD/tokenizer
work=$(mktemp -d /tmp/test_tokenizer_cli.XXXXXX)
trap 'rm -rf "$work"' EXIT
check() {  # name, condition result (0 = ok), why
  if [ "$2" -eq 0 ]; then echo "PASS $1"; else echo "FAIL $1: $3"; fi
}
if [ ! -x "$BPE" ]; then echo "FAIL tokenizer_cli: $BPE is not built"; exit 1; fi

out=$("$BPE" -h); rc=$?
ok=1; [ $rc -eq 0 ] && for f in train encode decode stats "-o PATH" "-v N" "default 8192" "-p NAME" "-s LIST" "-m N" "-t PATH" "-S" "-k"; do
  case "$out" in *"$f"*) ;; *) ok=0; miss=$f;; esac; done && [ $ok -eq 1 ]
check tokenizer_cli_usage $? "usage lacks '${miss:-?}'"

err=$("$BPE" encode -t x.json --bogus 2>&1); rc=$?
[ $rc -ne 0 ] && [[ "$err" == *"unknown flag '--bogus'"* ]]
check tokenizer_cli_unknown_flag $? "rc=$rc: $err"

err=$("$BPE" frobnicate 2>&1); rc=$?
[ $rc -ne 0 ] && [[ "$err" == *"unknown command"* ]]
check tokenizer_cli_unknown_command $? "rc=$rc: $err"

err=$("$BPE" train -o "$work/t.json" "$work/missing.txt" 2>&1); rc=$?
[ $rc -ne 0 ] && [[ "$err" == *"missing.txt"* ]] && [ ! -e "$work/t.json" ]
check tokenizer_cli_missing_input $? "rc=$rc: $err"

: > "$work/empty.txt"
err=$("$BPE" train -o "$work/t.json" "$work/empty.txt" 2>&1); rc=$?
[ $rc -ne 0 ] && [[ "$err" == *"empty"* ]] && [ ! -e "$work/t.json" ]
check tokenizer_cli_empty_input $? "rc=$rc: $err"

err=$("$BPE" train -o "$work/t.json" -v 12 "$work/empty.txt" 2>&1); rc=$?
[ $rc -ne 0 ] && [[ "$err" == *"-v"* ]]
check tokenizer_cli_bad_vocab $? "rc=$rc: $err"

echo '{"model": {"type": "WordPiece"' > "$work/bad.json"
err=$("$BPE" encode -t "$work/bad.json" "$work/empty.txt" 2>&1); rc=$?
[ $rc -ne 0 ] && [[ "$err" == *"bad.json"* ]] && [ "$(echo "$err" | wc -l)" -eq 1 ]
check tokenizer_cli_bad_tokenizer_json $? "rc=$rc: $err"

# train on text with NUL bytes and invalid UTF-8, then round trip it exactly
{ cat /usr/include/stdio.h 2>/dev/null; printf 'Hello, world! caf\xc3\xa9 \xff\xfe bad \xc3( \x00\x00 NUL <|end_of_text|>\n';
  for i in $(seq 1 50); do echo "line $i: the quick brown fox jumps over the lazy dog"; done; } > "$work/in.txt"
"$BPE" train -q -o "$work/t.json" -v 600 -p deepseek "$work/in.txt" 2> "$work/train.err"
check tokenizer_cli_train $? "$(cat "$work/train.err")"
"$BPE" encode -t "$work/t.json" -o "$work/ids.txt" "$work/in.txt" 2> "$work/enc.err" &&
  "$BPE" decode -t "$work/t.json" -o "$work/back.txt" "$work/ids.txt" && cmp -s "$work/in.txt" "$work/back.txt"
check tokenizer_cli_roundtrip_nul_invalid_utf8 $? "decoded bytes differ"
grep -q "invalid UTF-8" "$work/enc.err"
check tokenizer_cli_reports_invalid_utf8 $? "no invalid UTF-8 note: $(cat "$work/enc.err")"
# stdin/stdout and special tokens
a=$(printf '<|end_of_text|>' | "$BPE" encode -S -t "$work/t.json")
b=$(printf '<|end_of_text|>' | "$BPE" encode -t "$work/t.json")
[ "$a" = "598" ] && [ "$(echo "$b" | wc -w)" -gt 1 ]
check tokenizer_cli_special_flag $? "with -S '$a', without '$b'"
printf 'ab' > "$work/f1.txt"; printf 'hello world' > "$work/f2.txt"
two=$("$BPE" encode -t "$work/t.json" "$work/f1.txt" "$work/f2.txt")
[ "$(echo "$two" | wc -l)" -eq 2 ] && [ "$(echo "$two" | head -1)" = "$("$BPE" encode -t "$work/t.json" "$work/f1.txt")" ] &&
  [ "$(echo "$two" | tail -1)" = "$("$BPE" encode -t "$work/t.json" "$work/f2.txt")" ]
check tokenizer_cli_encode_several_files $? "got '$two'"
out=$("$BPE" stats -t "$work/t.json" "$work/in.txt"); rc=$?
[ $rc -eq 0 ] && [[ "$out" == *"round trip exact"* ]] && [[ "$out" == *"vocab size:  600"* ]] && [[ "$out" == *"bos/eos/pad: 597 598 599"* ]]
check tokenizer_cli_stats $? "rc=$rc: $out"
err=$(echo "1 2 999999" | "$BPE" decode -t "$work/t.json" 2>&1); rc=$?
[ $rc -ne 0 ] && [[ "$err" == *"999999"* ]]
check tokenizer_cli_decode_bad_id $? "rc=$rc: $err"
err=$(echo "1 2 x3" | "$BPE" decode -t "$work/t.json" 2>&1); rc=$?
[ $rc -ne 0 ] && [[ "$err" == *"byte 4"* ]]
check tokenizer_cli_decode_garbage $? "rc=$rc: $err"
exit 0
