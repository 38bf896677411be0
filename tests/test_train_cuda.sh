#!/usr/bin/env bash
# The trainer's CUDA path (--device cuda), with the CUDA kernels compiled through the
# CUDA-on-CPU harness (build/train_hx): the same losses as the CPU reference step by step,
# checkpoints from the GPU path resume exactly (fp32, bf16, fp16), bf16 and fp16 (dynamic loss
# scaling, overflow handling) train, --recompute changes nothing but memory, validation writes
# the domain/co-activation logs, and the CPU-only binary refuses --device cuda with a clear message.
set -u
BUILD=${BUILD:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HX="$ROOT/$BUILD/train_hx"
CPU="$ROOT/$BUILD/train"
W=$(mktemp -d /tmp/moe_train_cuda.XXXXXX)
trap 'rm -rf "$W"' EXIT
cd "$W"
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
if [ ! -x "$HX" ]; then echo "SKIP train_cuda_harness: $HX not built (no CUDA headers)"; exit 0; fi
"$ROOT/$BUILD/gen_shards" train.bin 64 40000 1 4 2 && "$ROOT/$BUILD/gen_shards" val.bin 64 6000 2 4 2 || { fail setup gen_shards; exit 1; }
TINY=(--train-data train.bin --val-data val.bin -C 32 -L 3 -H 2 --kv-lora-rank 16 --qk-nope-dim 8 --qk-rope-dim 4
      --v-head-dim 8 --inter-dim 48 --moe-inter-dim 16 -E 4 -K 2 -b 2 -t 16 --report-every 0 --sample-every 0
      --log-every 1 --val-every 4 --val-batches 2 -x 8 --ckpt-every 4 --lr 5e-3)
losses() { grep -o '"loss": [0-9.e-]*' "$1" | awk '{print $2}'; }

# 1. the GPU path in fp32 follows the CPU reference step by step
"$CPU" "${TINY[@]}" --name cpu --device cpu > cpu.log 2>&1 &&
"$HX" "${TINY[@]}" --name gpu --device cuda --precision fp32 > gpu.log 2>&1
if [ $? -ne 0 ]; then fail train_cuda_matches_cpu "a run failed: $(tail -n 3 gpu.log cpu.log)"
elif ! grep -q "device: GPU" gpu.log; then fail train_cuda_matches_cpu "the GPU path was not taken: $(head -n 2 gpu.log)"
else
  d=$(paste <(losses runs/cpu/train.jsonl) <(losses runs/gpu/train.jsonl) | awk '{d=$1-$2; if(d<0)d=-d; if(d>m)m=d} END{print m+0}')
  n=$(losses runs/gpu/train.jsonl | wc -l)
  if [ "$n" -eq 8 ] && awk -v d="$d" 'BEGIN{exit !(d < 2e-3)}'; then pass "train_cuda_matches_cpu (8 steps, max |loss diff| $d)"
  else fail train_cuda_matches_cpu "$n steps, max loss difference $d"; fi
  grep -q '"maxvio"' runs/gpu/routing.jsonl && pass train_cuda_routing_logs || fail train_cuda_routing_logs "no routing statistics"
fi

# 2. a GPU checkpoint resumes exactly on the GPU path
"$HX" "${TINY[@]}" --name r --device cuda --precision fp32 --stop-after 4 > r1.log 2>&1 &&
"$HX" --resume r --device cuda > r2.log 2>&1
if [ $? -ne 0 ]; then fail train_cuda_resume "$(tail -n 3 r2.log)"
elif cmp -s <(losses runs/gpu/train.jsonl) <(losses runs/r/train.jsonl); then pass train_cuda_resume
else fail train_cuda_resume "losses of the resumed run differ from the straight run"; fi

# 3. bf16 trains (loss falls) and the run records the precision
if "$HX" "${TINY[@]}" --name bf --device cuda --precision bf16 -x 30 --val-every 30 > bf.log 2>&1 &&
   grep -q "precision bf16" bf.log && grep -q '"precision": "bf16"' runs/bf/run.json; then
  a=$(losses runs/bf/train.jsonl | head -1); b=$(losses runs/bf/train.jsonl | tail -1)
  if awk -v a="$a" -v b="$b" 'BEGIN{exit !(b < a - 0.3)}'; then pass "train_cuda_bf16 (loss $a -> $b)"
  else fail train_cuda_bf16 "loss did not fall: $a -> $b"; fi
else fail train_cuda_bf16 "$(tail -n 3 bf.log)"; fi

# 4. the CPU-only binary refuses --device cuda, and falls back on auto
if "$CPU" "${TINY[@]}" --name x --device cuda > x.log 2>&1; then fail train_cpu_refuses_cuda "exit 0"
elif grep -q "no CUDA backend" x.log; then pass train_cpu_refuses_cuda
else fail train_cpu_refuses_cuda "$(cat x.log)"; fi

# 5. fp16 with dynamic loss scaling trains, logs its loss scale, and records fp16
if "$HX" "${TINY[@]}" --name h --device cuda --precision fp16 -x 30 --val-every 30 > h.log 2>&1 &&
   grep -q "precision fp16 with dynamic loss scaling" h.log && grep -q '"precision": "fp16"' runs/h/run.json &&
   grep -q '"loss_scale": 65536' runs/h/train.jsonl; then
  a=$(losses runs/h/train.jsonl | head -1); b=$(losses runs/h/train.jsonl | tail -1)
  if awk -v a="$a" -v b="$b" 'BEGIN{exit !(b < a - 0.3)}'; then pass "train_cuda_fp16 (loss $a -> $b)"
  else fail train_cuda_fp16 "loss did not fall: $a -> $b"; fi
else fail train_cuda_fp16 "$(tail -n 3 h.log)"; fi

# 6. an fp16 loss scale far too large overflows: steps are skipped and the scale halved until
#    it fits, without counting as divergence; the run then completes its steps
if "$HX" "${TINY[@]}" --name ov --device cuda --precision fp16 --loss-scale 4294967296 -x 6 --val-every 0 > ov.log 2>&1; then
  nov=$(grep -c '"reason": "fp16 overflow"' runs/ov/train.jsonl); n=$(losses runs/ov/train.jsonl | wc -l)
  if [ "$nov" -ge 3 ] && [ "$n" -eq 6 ] && grep -q "fp16 gradient overflow at loss scale 4.29497e+09" ov.log; then
    pass "train_cuda_fp16_overflow_halves_scale ($nov overflow steps, then 6 steps)"
  else fail train_cuda_fp16_overflow_halves_scale "$nov overflow lines, $n steps: $(tail -n 3 ov.log)"; fi
else fail train_cuda_fp16_overflow_halves_scale "$(tail -n 3 ov.log)"; fi

# 7. bf16 (stochastic rounding of the working copy) and fp16 (loss scale) runs resume bit for bit
for p in bf16 fp16; do
  "$HX" "${TINY[@]}" --name s$p --device cuda --precision $p > s$p.log 2>&1 &&
  "$HX" "${TINY[@]}" --name r$p --device cuda --precision $p --stop-after 4 > r1$p.log 2>&1 &&
  "$HX" --resume r$p --device cuda > r2$p.log 2>&1
  if [ $? -ne 0 ]; then fail train_cuda_resume_$p "$(tail -n 3 r2$p.log s$p.log)"
  elif grep -q "resumed from" r2$p.log && cmp -s <(losses runs/s$p/train.jsonl) <(losses runs/r$p/train.jsonl) &&
       [ "$(losses runs/r$p/train.jsonl | wc -l)" -eq 8 ]; then pass train_cuda_resume_$p
  else fail train_cuda_resume_$p "losses of the resumed $p run differ from the straight run"; fi
done

# 8. --recompute gives the same losses as keeping the activations (bf16), with less memory planned
if "$HX" "${TINY[@]}" --name rc --device cuda --precision bf16 --recompute > rc.log 2>&1 &&
   grep -q "recomputing norms and SwiGLU" rc.log; then
  a=$(grep -o "activations [0-9.]* MiB" sbf16.log | head -1); b=$(grep -o "activations [0-9.]* MiB" rc.log | head -1)
  if cmp -s <(losses runs/sbf16/train.jsonl) <(losses runs/rc/train.jsonl); then pass "train_cuda_recompute_same_losses ($a -> $b)"
  else fail train_cuda_recompute_same_losses "losses differ with --recompute"; fi
else fail train_cuda_recompute_same_losses "$(tail -n 3 rc.log)"; fi

# 9. validation on the GPU path writes the per-domain and co-activation logs, with the counts of
#    the CPU run (fp32: the same routing decisions)
if [ -s runs/gpu/domains.jsonl ] && [ -s runs/gpu/coact.jsonl ]; then
  if cmp -s runs/cpu/domains.jsonl runs/gpu/domains.jsonl && cmp -s runs/cpu/coact.jsonl runs/gpu/coact.jsonl; then
    pass train_cuda_domain_coact_logs
  else fail train_cuda_domain_coact_logs "domains/coact logs of the GPU run differ from the CPU run's"; fi
else fail train_cuda_domain_coact_logs "runs/gpu has no domains.jsonl / coact.jsonl"; fi

# 10. --precision auto takes bf16 where the device has it (the harness reports compute capability 9.0)
if "$HX" "${TINY[@]}" --name au --device cuda -x 1 --val-every 0 > au.log 2>&1 && grep -q "precision bf16" au.log; then
  pass train_cuda_auto_precision_bf16
else fail train_cuda_auto_precision_bf16 "$(grep device: au.log)"; fi

# 11. --attention cudnn: cuDNN cannot run under the harness, so the run says why and trains with
#     the flash kernels (the same losses as the default); a bad value is refused
if "$HX" "${TINY[@]}" --name cd --device cuda --precision bf16 --attention cudnn > cd.log 2>&1 &&
   grep -q "attention: cuDNN refused (.*harness.*): using the flash kernels" cd.log &&
   cmp -s <(losses runs/sbf16/train.jsonl) <(losses runs/cd/train.jsonl); then pass train_cuda_attention_cudnn_fallback
else fail train_cuda_attention_cudnn_fallback "$(grep attention cd.log; tail -n 2 cd.log)"; fi
if "$HX" "${TINY[@]}" --name bad --attention fast > bad.log 2>&1; then fail train_rejects_bad_attention "exit 0"
elif grep -q "attention must be flash or cudnn" bad.log; then pass train_rejects_bad_attention
else fail train_rejects_bad_attention "$(cat bad.log)"; fi
