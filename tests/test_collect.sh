#!/usr/bin/env bash
# End-to-end test of `collect`: tiny random models of every model_type (written by pt_tiny:
# bf16, sharded, bitsandbytes-saved), text datasets in JSONL / CSV / plain text, the trace
# read back through speculate's reader and checked against a recomputed forward
# (test_pretrained --check-trace), the diversity report, --plan from config.json alone, and
# bad command lines / inputs (one clear error line, non-zero exit, no crash).
set -u
BUILD=${BUILD:-build}
COLLECT=$BUILD/collect
TINY=$BUILD/pt_tiny
CHECK=$BUILD/tests/test_pretrained
for b in "$COLLECT" "$TINY" "$CHECK"; do
  if [ ! -x "$b" ]; then echo "FAIL collect_binaries: $b not built"; exit 1; fi
done
tmp=$(mktemp -d /tmp/test_collect.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }

# datasets
{
  echo '{"text": "The film was wonderful, the actors were great and the story moved me to tears.", "label": 1}'
  echo '{"text": "A dull, slow and predictable movie; I fell asleep halfway through the second act.", "label": 0}'
  echo '{"text": "An experiment in form that does not quite work, but the soundtrack is excellent.", "label": 1}'
  echo '{"text": "Expert routing decides which feed-forward blocks see each token of the review.", "label": 1}'
  echo '{"text": "Short.", "label": 0}'
  echo '{"text": "Every mixture-of-experts layer chooses a few experts for every token it sees.", "label": 0}'
} > "$tmp/imdb.jsonl"
{
  echo 'class,title,description'
  echo '1,"Markets rally","Stocks rose on Monday as investors welcomed the central bank decision, lifting indices."'
  echo '2,"Team wins final","The home team won the championship final after a dramatic penalty shoot-out on Sunday."'
  echo '3,"New chip","A new processor promises twice the performance per watt for data centre workloads, says maker."'
  echo '4,"Storm warning","Forecasters warned of heavy rain and strong winds along the coast through the weekend."'
} > "$tmp/news.csv"
printf 'In the beginning God created the heaven and the earth.\nAnd the earth was without form.\n\nAnd God said, Let there be light: and there was light. And God saw the light.\n\nAnd the evening and the morning were the first day, and it was good.\n' > "$tmp/bible.txt"
DATA="$tmp/imdb.jsonl:text $tmp/news.csv:3 $tmp/bible.txt"

run_model() {  # name, pt_tiny flags..., then collect runs with --quant $QUANT
  local name=$1; shift
  local dir="$tmp/$name"
  if ! "$TINY" --out "$dir" "$@" > "$tmp/$name.tiny.log" 2>&1; then
    fail "collect_$name" "pt_tiny failed: $(tail -1 "$tmp/$name.tiny.log")"; return
  fi
  if ! "$COLLECT" --model "$dir" --data "$DATA" --out "$tmp/$name.trace" --n 3 --max-len 24 --min-len 4 --batch 2 \
       --quant "$QUANT" --quiet > "$tmp/$name.log" 2>&1; then
    fail "collect_$name" "collect failed: $(tail -2 "$tmp/$name.log" | tr '\n' ' ')"; return
  fi
  local ok=1 why=""
  grep -q "expert diversity" "$tmp/$name.log" || { ok=0; why="no diversity report"; }
  grep -q "used/E" "$tmp/$name.log" || { ok=0; why="no per-layer table"; }
  grep -q "memory plan" "$tmp/$name.log" || { ok=0; why="no memory plan"; }
  grep -Eq "imdb +3 sequences" "$tmp/$name.log" || { ok=0; why="imdb not sampled 3 times"; }
  grep -Eq "news +3 sequences" "$tmp/$name.log" || { ok=0; why="news not sampled 3 times"; }
  [ -s "$tmp/$name.trace" ] || { ok=0; why="no trace file"; }
  if [ $ok -eq 1 ]; then pass "collect_$name"; else fail "collect_$name" "$why"; fi
  "$CHECK" --check-trace "$tmp/$name.trace" "$dir" "$QUANT" > "$tmp/$name.check.log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ] && [ "$(grep -c '^PASS' "$tmp/$name.check.log")" -eq 2 ]; then
    pass "collect_${name}_trace_matches_forward"
  else
    fail "collect_${name}_trace_matches_forward" "$(grep -E '^(FAIL|  )' "$tmp/$name.check.log" | head -3 | tr '\n' ' ')"
  fi
}

QUANT=nf4 run_model deepseek_bf16 --arch deepseek
OMP_NUM_THREADS=1 QUANT=nf4 run_model qwen2_moe_sharded --arch qwen2_moe --shards 2 --seed 3  # one thread: the per-expert path
QUANT=nf4 run_model deepseek_v3_bnb --arch deepseek_v3 --bnb 1 --seed 4
QUANT=none run_model deepseek_v3_f32 --arch deepseek_v3 --dtype f32 --q-lora 0 --seed 5

# --plan works from config.json alone
mkdir -p "$tmp/planonly"
cp "$tmp/deepseek_bf16/config.json" "$tmp/planonly/"
if "$COLLECT" --model "$tmp/planonly" --plan > "$tmp/plan.log" 2>&1 && grep -q "total" "$tmp/plan.log"; then
  pass collect_plan_from_config_only
else
  fail collect_plan_from_config_only "$(tail -1 "$tmp/plan.log")"
fi

# -h lists every flag with its default
"$COLLECT" -h > "$tmp/help.log" 2>&1
ok=1
for f in --model --data --out --n --max-len --min-len --batch --quant --double-quant --reuse --tokenizer --bos --name --seed --threads --plan --quiet; do
  grep -q -- "$f" "$tmp/help.log" || { ok=0; echo "  help lacks $f"; }
done
if [ $ok -eq 1 ]; then pass collect_help_lists_flags; else fail collect_help_lists_flags "missing flags"; fi

# bad command lines and inputs: non-zero exit, one clear error line naming the problem
bad() {  # name, expected substring, args...
  local name=$1 want=$2; shift 2
  "$COLLECT" "$@" > "$tmp/bad.out" 2> "$tmp/bad.err"
  local rc=$?
  if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -q -- "$want" "$tmp/bad.err"; then
    pass "collect_bad_$name"
  else
    fail "collect_bad_$name" "rc=$rc, stderr: $(grep -m1 error "$tmp/bad.err")"
  fi
}
bad no_model "--model DIR is required"
bad unknown_flag "unknown flag --frobnicate" --model "$tmp/deepseek_bf16" --frobnicate 1
bad bad_number "--n abc" --model "$tmp/deepseek_bf16" --n abc
bad missing_model_dir "config.json" --model "$tmp/nope"
bad missing_data "$tmp/missing.jsonl" --model "$tmp/deepseek_bf16" --data "$tmp/missing.jsonl:text" --out "$tmp/m.trace"
bad bad_field "nofield" --model "$tmp/deepseek_bf16" --data "$tmp/imdb.jsonl:nofield" --out "$tmp/m.trace"
bad bad_quant "--quant" --model "$tmp/deepseek_bf16" --quant int8
# the other programs of pretrained/: -h lists the flags, unknown flags are refused
for prog in pt_tiny export bench_nf4; do
  p="$BUILD/$prog"
  if [ ! -x "$p" ]; then echo "SKIP ${prog}_cli: $p not built"; continue; fi
  if "$p" -h > "$tmp/h.out" 2>&1 && grep -q -- "--" "$tmp/h.out"; then
    "$p" --no-such-flag 1 > /dev/null 2> "$tmp/h.err"; rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -q "error" "$tmp/h.err"; then pass "${prog}_cli"
    else fail "${prog}_cli" "unknown flag: rc=$rc"; fi
  else
    fail "${prog}_cli" "-h failed"
  fi
done
"$BUILD/export" --ckpt "$tmp/none.ckpt" --out "$tmp/exp" > /dev/null 2> "$tmp/e.err"
if [ $? -ne 0 ] && grep -q "none.ckpt" "$tmp/e.err"; then pass export_missing_checkpoint; else fail export_missing_checkpoint "$(head -1 "$tmp/e.err")"; fi
"$TINY" --out "$tmp/t2" --arch llama > /dev/null 2> "$tmp/t.err"
if [ $? -ne 0 ] && grep -q "arch" "$tmp/t.err"; then pass pt_tiny_bad_arch; else fail pt_tiny_bad_arch "$(head -1 "$tmp/t.err")"; fi

printf '{"model_type": "deepseek", "vocab_size": 320}' > "$tmp/planonly/config.json"
bad config_missing_field "'hidden_size'" --model "$tmp/planonly" --plan
exit 0
