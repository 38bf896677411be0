#!/usr/bin/env bash
# End-to-end and bad-input tests of `prepare` on small files made here (the full built-in
# corpus is not built: `make data` does that). Prints PASS/FAIL/SKIP lines.
# Needs BUILD (the build folder holding `prepare`).
set -u
BUILD=${BUILD:-build}
P="$BUILD/prepare"
if [ ! -x "$P" ]; then
  echo "FAIL prepare_exists: $P not built"
  exit 1
fi
T=$(mktemp -d /tmp/moe_test_prepare_XXXXXX)
trap 'rm -rf "$T"' EXIT

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }

# run NAME: runs prepare with the remaining args, output in $T/NAME.log, status in $rc
run() {
  local name=$1; shift
  "$P" "$@" > "$T/$name.log" 2>&1
  rc=$?
}
# expect_error NAME PATTERN... : non-zero exit, one line "error: ..." containing every PATTERN,
# and nothing half-written (no meta.json, no *.tmp) under the output folder $T/out_NAME
expect_error() {
  local name=$1; shift
  local why=""
  if [ "$rc" -eq 0 ]; then why="exit status 0"; fi
  local msg
  msg=$(grep '^error: ' "$T/$name.log" | head -1)
  [ -z "$msg" ] && why="$why; no 'error:' line (got: $(head -c 300 "$T/$name.log"))"
  for pat in "$@"; do
    grep -qF -- "$pat" <<< "$msg" || why="$why; message lacks '$pat': $msg"
  done
  if grep -qiE 'sanitizer|runtime error|segmentation' "$T/$name.log"; then why="$why; crashed"; fi
  if [ -e "$T/out_$name/meta.json" ]; then why="$why; meta.json written"; fi
  if ls "$T/out_$name"/*.tmp > /dev/null 2>&1; then why="$why; temporary file left"; fi
  if [ -z "$why" ]; then pass "prepare_error_$name"; else fail "prepare_error_$name" "$why"; fi
}

# ---------------------------------------------------------------------------------------
# small inputs: plain text (paragraphs), JSONL, CSV
python_free_text() {
  local i
  for i in $(seq 1 60); do
    echo "Paragraph $i of the notes. The quick brown fox jumps over the lazy dog number $i, and then it rests."
    echo
  done
}
python_free_text > "$T/notes.txt"
for i in $(seq 1 40); do
  printf '{"id": %d, "body": "Review %d: the food was %s and the service was %s.", "stars": %d}\n' \
    "$i" "$i" "$([ $((i % 2)) -eq 0 ] && echo good || echo cold)" "$([ $((i % 3)) -eq 0 ] && echo slow || echo fine)" $((i % 5 + 1))
done > "$T/reviews.jsonl"
{
  echo 'id,title,text'
  for i in $(seq 1 40); do echo "$i,\"Headline $i\",\"Markets moved $i points, said the \"\"analyst\"\" on day $i.\""; done
} > "$T/news.csv"

# 1. a good run
run good --out "$T/good" --vocab 300 --text-unit paragraph \
  --input "notes=$T/notes.txt" --input "reviews=$T/reviews.jsonl:body" --input "news=$T/news.csv:text"
if [ "$rc" -eq 0 ] && [ -s "$T/good/train_000.bin" ] && [ -s "$T/good/val_000.bin" ] && [ -s "$T/good/tokenizer.json" ] \
   && [ -s "$T/good/meta.json" ]; then
  pass prepare_user_inputs
else
  fail prepare_user_inputs "rc=$rc, outputs: $(ls "$T/good" 2>/dev/null | tr '\n' ' '); log: $(tail -3 "$T/good.log")"
fi
# per-domain counts in meta.json and the shard's domain table
if grep -q '"name":	"reviews"' "$T/good/meta.json" 2>/dev/null && grep -q '"val_docs":	2' "$T/good/meta.json" 2>/dev/null \
   && "$P" --inspect "$T/good/train_000.bin" "$T/good/val_000.bin" > "$T/inspect.log" 2>&1 \
   && grep -qE 'notes +[0-9]+ tokens +57 documents' "$T/inspect.log" \
   && grep -qE 'reviews +[0-9]+ tokens +38 documents' "$T/inspect.log" \
   && grep -qE 'news +[0-9]+ tokens +2 documents' "$T/inspect.log"; then
  pass prepare_meta_and_domains
else
  fail prepare_meta_and_domains "$(head -5 "$T/inspect.log" 2>/dev/null)"
fi
grep -q 'decodes back to its exact bytes' "$T/good.log" && pass prepare_round_trip || fail prepare_round_trip "no round-trip line"

# 2. deterministic: the same inputs give the same bytes
run good2 --out "$T/good2" --vocab 300 --text-unit paragraph \
  --input "notes=$T/notes.txt" --input "reviews=$T/reviews.jsonl:body" --input "news=$T/news.csv:text"
if cmp -s "$T/good/train_000.bin" "$T/good2/train_000.bin" && cmp -s "$T/good/val_000.bin" "$T/good2/val_000.bin" \
   && cmp -s "$T/good/tokenizer.json" "$T/good2/tokenizer.json"; then
  pass prepare_deterministic
else
  fail prepare_deterministic "second run differs"
fi

# 3. a given tokenizer is used as is
run given --out "$T/given" --tokenizer "$T/good/tokenizer.json" --input "notes=$T/notes.txt" --text-unit paragraph
if [ "$rc" -eq 0 ] && cmp -s "$T/good/tokenizer.json" "$T/given/tokenizer.json"; then
  pass prepare_given_tokenizer
else
  fail prepare_given_tokenizer "rc=$rc $(tail -2 "$T/given.log")"
fi

# 3b. shards left by an earlier run into the same folder are removed (a glob would pick them up)
touch "$T/given/train_005.bin" "$T/given/val_002.bin"
run given2 --out "$T/given" --tokenizer "$T/good/tokenizer.json" --input "notes=$T/notes.txt" --text-unit paragraph
if [ "$rc" -eq 0 ] && [ ! -e "$T/given/train_005.bin" ] && [ ! -e "$T/given/val_002.bin" ] && [ -s "$T/given/train_000.bin" ]; then
  pass prepare_removes_old_shards
else
  fail prepare_removes_old_shards "rc=$rc $(ls "$T/given" | tr '\n' ' ')"
fi

# 3c. --shard-tokens cuts the train split at document boundaries into shards of at most N tokens
for i in $(seq 1 300); do echo "Paragraph $i of the notes, with some more words to make it longer than before."; echo; done > "$T/long.txt"
run split --out "$T/split" --vocab 300 --text-unit paragraph --shard-tokens 1024 --input "notes=$T/long.txt"
"$P" --inspect "$T/split"/train_*.bin > "$T/split_inspect.log" 2>&1
nshards=$(grep -c '^/.*train_.*tokens' "$T/split_inspect.log")
maxtok=$(grep '^/.*train_.*tokens' "$T/split_inspect.log" | sed 's/.*: \([0-9]*\) tokens.*/\1/' | sort -n | tail -1)
sumtok=$(grep '^/.*train_.*tokens' "$T/split_inspect.log" | sed 's/.*: \([0-9]*\) tokens.*/\1/' | paste -sd+ | bc)
metatok=$(grep '"train_tokens"' "$T/split/meta.json" 2>/dev/null | head -1 | tr -dc '0-9')
if [ "$rc" -eq 0 ] && [ "$nshards" -ge 5 ] && [ "${maxtok:-99999}" -le 1024 ] && [ "$sumtok" = "$metatok" ]; then
  pass prepare_shard_tokens
else
  fail prepare_shard_tokens "rc=$rc shards=$nshards max=$maxtok sum=$sumtok meta=$metatok"
fi

# 3d. --val-every 0: everything in train, an empty (valid) validation shard
run noval --out "$T/noval" --vocab 280 --val-every 0 --input "notes=$T/notes.txt"
if [ "$rc" -eq 0 ] && "$P" --inspect "$T/noval/val_000.bin" 2>&1 | grep -q ': 0 tokens' && grep -q 'validation split is empty' "$T/noval.log"; then
  pass prepare_no_validation
else
  fail prepare_no_validation "rc=$rc $(tail -2 "$T/noval.log")"
fi

# 4. 4-byte token ids on request
run wide --out "$T/wide" --vocab 300 --token-bytes 4 --input "notes=$T/notes.txt" --text-unit paragraph
if [ "$rc" -eq 0 ] && "$P" --inspect "$T/wide/train_000.bin" | grep -q '4-byte ids'; then
  pass prepare_token_bytes_4
else
  fail prepare_token_bytes_4 "rc=$rc"
fi

# 5. invalid UTF-8 is kept (byte-level BPE) and counted
printf 'caf\xe9 au lait \xff\xfe and more text here\n\nsecond paragraph\n\nthird one\n' > "$T/latin1.txt"
run latin1 --out "$T/latin1" --vocab 270 --text-unit paragraph --input "l=$T/latin1.txt"
if [ "$rc" -eq 0 ] && grep -q 'invalid UTF-8' "$T/latin1.log" && grep -q '"invalid_utf8_bytes":	3' "$T/latin1/meta.json"; then
  pass prepare_invalid_utf8_counted
else
  fail prepare_invalid_utf8_counted "rc=$rc $(grep -i utf "$T/latin1.log")"
fi

# ---------------------------------------------------------------------------------------
# bad inputs: each a clear one-line error naming the file (and line/byte), nothing written
run missing --out "$T/out_missing" --input "x=$T/no_such_file.txt"
expect_error missing "no_such_file.txt"

: > "$T/empty.txt"
run empty --out "$T/out_empty" --input "x=$T/empty.txt"
expect_error empty "empty.txt" "empty"

printf 'some text\nwith a NUL\0 byte\n' > "$T/nul.txt"
run nul --out "$T/out_nul" --input "x=$T/nul.txt"
expect_error nul "nul.txt" "NUL byte at byte 20" "line 2"

printf '{"text": "fine"}\n{"text": "broken\n' > "$T/bad.jsonl"
run badjson --out "$T/out_badjson" --input "x=$T/bad.jsonl"
expect_error badjson "bad.jsonl" "line 2" "not valid JSON"

printf '{"text": "fine"}\n{"body": "no text field"}\n' > "$T/nofield.jsonl"
run nofield --out "$T/out_nofield" --input "x=$T/nofield.jsonl"
expect_error nofield "nofield.jsonl" "line 2" "no field 'text'"

printf 'id,text\n1,ok\n2\n' > "$T/short.csv"
run shortcsv --out "$T/out_shortcsv" --input "x=$T/short.csv:text"
expect_error shortcsv "short.csv" "line 3" "column"

run nocol --out "$T/out_nocol" --input "x=$T/news.csv:body"
expect_error nocol "news.csv" "no column named 'body'"

run bigvocab --out "$T/out_bigvocab" --vocab 70000 --token-bytes 2 --input "notes=$T/notes.txt"
expect_error bigvocab "70000" "2-byte"

run baddomain --out "$T/out_baddomain" --input "bad name=$T/notes.txt"
expect_error baddomain "bad name"

printf 'not json at all' > "$T/tok.json"
run badtok --out "$T/out_badtok" --tokenizer "$T/tok.json" --input "notes=$T/notes.txt"
expect_error badtok "tok.json"

run nothing --out "$T/out_nothing"
expect_error nothing "nothing to prepare"

run unknown --out "$T/out_unknown" --frobnicate
expect_error unknown "--frobnicate"

run badint --out "$T/out_badint" --vocab 12x --input "notes=$T/notes.txt"
expect_error badint "--vocab" "12x"

# skip-bad turns the bad lines into a count
run skipbad --out "$T/out_skipbad" --skip-bad --vocab 260 --input "x=$T/nofield.jsonl"
if [ "$rc" -eq 0 ] && grep -q '1 bad lines/rows skipped' "$T/skipbad.log"; then pass prepare_skip_bad; else fail prepare_skip_bad "rc=$rc $(tail -2 "$T/skipbad.log")"; fi

# a truncated or corrupted shard is refused, naming the file and what is wrong
if [ -s "$T/good/train_000.bin" ]; then
  n=$(stat -c %s "$T/good/train_000.bin")
  head -c $((n / 2)) "$T/good/train_000.bin" > "$T/trunc.bin"
  run trunc --inspect "$T/trunc.bin"
  expect_error trunc "trunc.bin" "truncated"
  cp "$T/good/train_000.bin" "$T/flip.bin"
  printf '\x55' | dd of="$T/flip.bin" bs=1 seek=$((n - 100)) conv=notrunc status=none
  run flip --inspect "$T/flip.bin"
  expect_error flip "flip.bin" "checksum"
fi

# -h lists every flag with its default and exits 0
"$P" -h > "$T/help.log" 2>&1
hrc=$?
missing_flags=""
for f in --builtin --input --name --out --shard-tokens --token-bytes --dump --tokenizer --vocab --pattern --val-every \
         --builtin-cap --cap --text-unit --no-header --skip-bad --bible --dictd --include --threads --no-verify --inspect; do
  grep -qF -- "$f" "$T/help.log" || missing_flags="$missing_flags $f"
done
if [ "$hrc" -eq 0 ] && [ -z "$missing_flags" ]; then pass prepare_help; else fail prepare_help "rc=$hrc missing:$missing_flags"; fi

# the built-in sources on a small slice: only when the Debian packages are there (make data builds it all)
if [ -x /usr/bin/bible ] && [ -e /usr/share/dictd/jargon.index ] && [ -e /usr/share/dictd/gcide.index ] \
   && [ -e /usr/share/dictd/foldoc.index ]; then
  run builtin --out "$T/builtin" --builtin --builtin-cap 0.2 --vocab 1000 -q
  if [ "$rc" -eq 0 ] && "$P" --inspect "$T/builtin/train_000.bin" > "$T/bi.log" 2>&1 \
     && [ "$(grep -cE 'domain [0-4] (bible|gcide|jargon|foldoc|code) ' "$T/bi.log")" -eq 5 ]; then
    pass prepare_builtin_small
  else
    fail prepare_builtin_small "rc=$rc $(tail -3 "$T/builtin.log") $(cat "$T/bi.log" 2>/dev/null)"
  fi
else
  echo "SKIP prepare_builtin_small: Debian packages bible-kjv / dict-gcide / dict-jargon / dict-foldoc not installed (make data installs them)"
fi
