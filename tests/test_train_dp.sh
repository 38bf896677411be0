#!/usr/bin/env bash
# Data-parallel training (--gpus N) through the CUDA-on-CPU harness (build/train_hx), where the
# "GPUs" are processes and the collectives run over shared memory (comm.cu's harness build):
# the whole logic of the trainer (launcher, data order, sums of gradients and routing
# statistics, agreed stop, rank 0's files, resume rule, failure handling) runs here; NCCL
# itself needs GPUs and does not.
#   1. 2 GPUs x grad_accum 1 = 1 GPU x grad_accum 2: the same losses step by step and the same
#      final checkpoint within the rounding of another summation order; the worker's final
#      model is bit-identical to rank 0's
#   2. 3 GPUs (odd world) = 1 GPU x grad_accum 3
#   3. a 2-GPU run stopped (--stop-after) and resumed continues exactly; a 2-GPU checkpoint
#      resumes on 1 GPU with grad_accum 2; --gpus 3 is refused on it (3 does not divide 2)
#   4. SIGTERM to rank 0: every rank stops after the same step, rank 0 saves, no worker is left
#   5. bf16 on 2 GPUs trains (the loss falls)
#   6. failures: a worker that exits before the rendezvous or in the middle of the run, and a
#      rank 0 that dies: non-zero exit with a clear message within seconds, nothing left running
#   7. --gpus 2 is refused by the CPU-only build and with --device cpu
set -u
BUILD=${BUILD:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HX="$ROOT/$BUILD/train_hx"
CPU="$ROOT/$BUILD/train"
CMP="$ROOT/$BUILD/ckpt_compare"
if [ ! -x "$HX" ]; then echo "SKIP train_dp: $HX not built (no CUDA headers)"; exit 0; fi
W=$(mktemp -d /tmp/moe_train_dp.XXXXXX)
trap 'rm -rf "$W"' EXIT
cd "$W"
export TMPDIR="$W" OMP_NUM_THREADS=1  # rendezvous directories in here; several processes share 2 cores
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
"$ROOT/$BUILD/gen_shards" train.bin 64 40000 1 4 2 > /dev/null && "$ROOT/$BUILD/gen_shards" val.bin 64 6000 2 4 2 > /dev/null ||
  { fail setup gen_shards; exit 1; }
TINY=(--train-data train.bin --val-data val.bin -C 32 -L 3 -H 2 --kv-lora-rank 16 --qk-nope-dim 8 --qk-rope-dim 4
      --v-head-dim 8 --inter-dim 48 --moe-inter-dim 16 -E 4 -K 2 -b 2 -t 16 --report-every 0 --sample-every 0
      --log-every 1 --val-every 3 --val-batches 2 -x 6 --ckpt-every 3 --lr 5e-3 --device cuda --precision fp32)
losses() { grep -o '"loss": [0-9.e-]*' "$1" | awk '{print $2}'; }
# the largest |difference| of two loss columns, and the number of rows
maxdiff() { paste <(losses "$1") <(losses "$2") | awk '{d=$1-$2; if(d<0)d=-d; if(d>m)m=d; n++} END{printf "%g %d", m+0, n}'; }
# no process of these pids runs (a zombie waiting for init to reap it does not), waiting up to 5 s
no_workers_left() {
  for _ in $(seq 1 50); do
    local alive=0
    for p in "$@"; do [ -e "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2> /dev/null && alive=1; done
    [ $alive -eq 0 ] && return 0
    sleep 0.1
  done
  return 1
}
worker_pids() { grep -o 'worker processes (ranks [0-9.]*): [0-9 ]*' "$1" | sed 's/.*: //'; }

# 1. 2 GPUs = 1 GPU with grad_accum 2
MOE_DP_TEST_SAVE=1 "$HX" "${TINY[@]}" --name d2 --gpus 2 > d2.log 2>&1; rc1=$?
"$HX" "${TINY[@]}" --name a2 --grad-accum 2 > a2.log 2>&1; rc2=$?
if [ $rc1 -ne 0 ] || [ $rc2 -ne 0 ]; then fail train_dp2_equals_accum2 "a run failed: $(tail -n 3 d2.log a2.log)"
elif ! grep -q "data parallel: rank 0 of 2 (shared memory" d2.log || ! grep -q "x 2 GPUs = 64 tokens/step" d2.log ||
     ! grep -q '"gpus": 2' runs/d2/run.json; then fail train_dp2_equals_accum2 "no 2-GPU run: $(grep -m3 'data parallel\|tokens/step' d2.log)"
else
  read -r d n <<< "$(maxdiff runs/d2/train.jsonl runs/a2/train.jsonl)"
  # fp32: the two runs sum the same per-sequence gradients in another order (rank sums vs
  # accumulation into one buffer): differences of a few ulps, far below 1e-5
  if [ "$n" -eq 6 ] && awk -v d="$d" 'BEGIN{exit !(d < 1e-5)}'; then pass "train_dp2_equals_accum2_losses (6 steps, max |loss diff| $d)"
  else fail train_dp2_equals_accum2_losses "$n steps, max loss difference $d"; fi
  if out=$("$CMP" --tol 1e-5 checkpoints/d2/step_00000006.ckpt checkpoints/a2/step_00000006.ckpt); then
    pass "train_dp2_equals_accum2_checkpoint ($out)"
  else fail train_dp2_equals_accum2_checkpoint "$out"; fi
  if out=$("$CMP" --model-only checkpoints/d2/rank1.ckpt checkpoints/d2/step_00000006.ckpt); then pass train_dp2_ranks_bit_identical
  else fail train_dp2_ranks_bit_identical "the worker's final model differs from rank 0's: $out"; fi
  if [ "$(ls checkpoints/d2 | grep -c step_)" -eq 2 ] && [ ! -e runs/d2/rank1 ] && [ "$(grep -c val_loss runs/d2/train.jsonl)" -eq 2 ] &&
     [ -z "$(ls "$W" | grep moe_dp)" ]; then pass train_dp2_rank0_writes_once
  else fail train_dp2_rank0_writes_once "checkpoints: $(ls checkpoints/d2 | tr '\n' ' '), $(grep -c val_loss runs/d2/train.jsonl) validations, left: $(ls "$W" | grep moe_dp)"; fi
fi

# 2. an odd world: 3 GPUs = 1 GPU with grad_accum 3
"$HX" "${TINY[@]}" --name d3 --gpus 3 -x 3 > d3.log 2>&1 && "$HX" "${TINY[@]}" --name a3 --grad-accum 3 -x 3 > a3.log 2>&1
if [ $? -ne 0 ]; then fail train_dp3_equals_accum3 "$(tail -n 3 d3.log a3.log)"
else
  read -r d n <<< "$(maxdiff runs/d3/train.jsonl runs/a3/train.jsonl)"
  if [ "$n" -eq 3 ] && grep -q "rank 0 of 3" d3.log && awk -v d="$d" 'BEGIN{exit !(d < 1e-5)}'; then pass "train_dp3_equals_accum3 (max |loss diff| $d)"
  else fail train_dp3_equals_accum3 "$n steps, max loss difference $d"; fi
fi

# 3. stop and resume on 2 GPUs: exactly the straight run; on 1 GPU: the same global batch
"$HX" "${TINY[@]}" --name r2 --gpus 2 --stop-after 3 > r1.log 2>&1 && "$HX" --resume r2 > r2.log 2>&1
if [ $? -ne 0 ]; then fail train_dp2_resume "$(tail -n 3 r1.log r2.log)"
elif grep -q "rank 0 of 2" r2.log && cmp -s <(losses runs/d2/train.jsonl) <(losses runs/r2/train.jsonl) &&
     [ "$(losses runs/r2/train.jsonl | wc -l)" -eq 6 ]; then pass train_dp2_resume_exact
else fail train_dp2_resume_exact "losses of the resumed 2-GPU run differ from the straight run: $(paste <(losses runs/d2/train.jsonl) <(losses runs/r2/train.jsonl) | tr '\n' ' ')"; fi
if "$HX" --resume checkpoints/r2/step_00000003.ckpt --name r1g --gpus 1 --train-data train.bin --val-data val.bin \
     --val-every 3 --val-batches 2 --report-every 0 --sample-every 0 > r1g.log 2>&1 &&
   grep -q "resuming on 1 GPU with grad_accum 2" r1g.log; then
  tail -n +4 runs/d2/train.jsonl | grep '"loss"' > d2_tail.jsonl
  read -r d n <<< "$(maxdiff d2_tail.jsonl runs/r1g/train.jsonl)"
  if [ "$n" -eq 3 ] && awk -v d="$d" 'BEGIN{exit !(d < 1e-5)}'; then pass "train_dp2_checkpoint_resumes_on_1gpu (max |loss diff| $d)"
  else fail train_dp2_checkpoint_resumes_on_1gpu "$n steps, max loss difference $d"; fi
else fail train_dp2_checkpoint_resumes_on_1gpu "$(tail -n 3 r1g.log)"; fi
if "$HX" --resume r2 --gpus 3 > r3.log 2>&1; then fail train_dp_resume_refuses_other_global_batch "exit 0"
elif grep -q "error: --gpus 3: the checkpoint's optimizer step takes 2 micro-batches" r3.log; then pass train_dp_resume_refuses_other_global_batch
else fail train_dp_resume_refuses_other_global_batch "$(cat r3.log)"; fi

# 4. SIGTERM to rank 0 in the middle: all ranks stop after the same step, rank 0 saves
"$HX" "${TINY[@]}" --name st --gpus 2 -x 200 --val-every 0 --ckpt-every 0 > st.log 2>&1 &
pid=$!
for _ in $(seq 1 300); do [ -s runs/st/train.jsonl ] && [ "$(wc -l < runs/st/train.jsonl)" -ge 2 ] && break; sleep 0.1; done
kill -TERM $pid
wait $pid; rc=$?
n=$(losses runs/st/train.jsonl | wc -l)
if [ $rc -eq 0 ] && grep -q "stopped at step $n (checkpoint saved)" st.log && [ -f "checkpoints/st/step_$(printf %08d "$n").ckpt" ] &&
   [ "$n" -lt 200 ] && no_workers_left $(worker_pids st.log); then pass "train_dp2_sigterm_stops_all_ranks (at step $n)"
else fail train_dp2_sigterm_stops_all_ranks "rc $rc, $n steps: $(tail -n 3 st.log)"; fi

# 5. bf16 on 2 GPUs trains
if "$HX" "${TINY[@]}" --name bf --gpus 2 --precision bf16 -x 24 --val-every 0 --ckpt-every 0 > bf.log 2>&1 &&
   grep -q "precision bf16" bf.log && grep -q "rank 0 of 2" bf.log; then
  a=$(losses runs/bf/train.jsonl | head -1); b=$(losses runs/bf/train.jsonl | tail -1)
  if awk -v a="$a" -v b="$b" 'BEGIN{exit !(b < a - 0.3)}'; then pass "train_dp2_bf16_trains (loss $a -> $b)"
  else fail train_dp2_bf16_trains "loss did not fall: $a -> $b"; fi
else fail train_dp2_bf16_trains "$(tail -n 3 bf.log)"; fi

# 6. failures end the run quickly with a message naming the rank, and leave nothing running
t0=$(date +%s.%N)
MOE_DP_TEST_EXIT=1:0 timeout 60 "$HX" "${TINY[@]}" --name f0 --gpus 2 > f0.log 2>&1; rc=$?
dt=$(echo "$(date +%s.%N) - $t0" | bc)
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "error: GPU worker rank 1 (pid [0-9]*) exited with status 3" f0.log &&
   grep -q "end of GPU worker rank 1's output" f0.log &&
   grep -q "rank 1 | test hook: rank 1 exits before the rendezvous" f0.log && awk -v t="$dt" 'BEGIN{exit !(t < 10)}'; then
  pass "train_dp_worker_fails_to_start (exit $rc after ${dt%???????} s)"
else fail train_dp_worker_fails_to_start "rc $rc after $dt s: $(cat f0.log | tail -n 5)"; fi
t0=$(date +%s.%N)
MOE_DP_TEST_EXIT=1:3 timeout 60 "$HX" "${TINY[@]}" --name f3 --gpus 3 > f3.log 2>&1; rc=$?
dt=$(echo "$(date +%s.%N) - $t0" | bc)
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "error: GPU worker rank 1 (pid [0-9]*) exited with status 3" f3.log &&
   grep -q "test hook: rank 1 exits at step 3" f3.log && [ "$(losses runs/f3/train.jsonl | wc -l)" -eq 2 ] &&
   no_workers_left $(worker_pids f3.log); then pass "train_dp_worker_dies_mid_run (exit $rc after ${dt%???????} s)"
else fail train_dp_worker_dies_mid_run "rc $rc after $dt s: $(cat f3.log | tail -n 5)"; fi
MOE_DP_TEST_EXIT=0:3 timeout 60 "$HX" "${TINY[@]}" --name fr0 --gpus 2 > fr0.log 2>&1; rc=$?
if [ $rc -eq 3 ] && no_workers_left $(worker_pids fr0.log); then pass train_dp_rank0_dies_workers_follow
else fail train_dp_rank0_dies_workers_follow "rc $rc, workers $(worker_pids fr0.log) still running?"; fi

# 7. refusals
if "$CPU" "${TINY[@]/cuda/cpu}" --name x --gpus 2 > x.log 2>&1; then fail train_dp_refused_without_cuda "exit 0"
elif grep -q "error: --gpus 2: this build of train has no CUDA backend" x.log; then pass train_dp_refused_without_cuda
else fail train_dp_refused_without_cuda "$(cat x.log)"; fi
if "$HX" "${TINY[@]/cuda/cpu}" --name x --gpus 2 > x2.log 2>&1; then fail train_dp_refused_on_cpu_device "exit 0"
elif grep -q "cannot be combined with --device cpu" x2.log; then pass train_dp_refused_on_cpu_device
else fail train_dp_refused_on_cpu_device "$(cat x2.log)"; fi
