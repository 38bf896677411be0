#!/usr/bin/env bash
# cuda_bench (model/cuda/bench_cuda.c) through the CUDA-on-CPU harness: usage, bad flags,
# and three training steps of the tiny config.
set -u
BUILD=${BUILD:-build}
bin=$BUILD/cuda_bench_hx
if [ ! -x "$bin" ]; then echo "FAIL cuda_bench_exists: $bin not built"; exit 1; fi
out=$("$bin" -h 2>&1); rc=$?
if [ $rc -eq 0 ] && echo "$out" | grep -q -- "-steps N" && echo "$out" | grep -q "default 10"; then echo "PASS cuda_bench_usage"; else echo "FAIL cuda_bench_usage: rc $rc"; fi
out=$("$bin" -bogus 1 2>&1); rc=$?
if [ $rc -ne 0 ] && [ "$(echo "$out" | wc -l)" -eq 1 ] && echo "$out" | grep -q "unknown flag"; then echo "PASS cuda_bench_rejects_unknown_flag"; else echo "FAIL cuda_bench_rejects_unknown_flag: rc $rc: $out"; fi
out=$("$bin" -config tiny -B 0 2>&1); rc=$?
if [ $rc -ne 0 ] && echo "$out" | grep -q "^error: -B"; then echo "PASS cuda_bench_rejects_bad_batch"; else echo "FAIL cuda_bench_rejects_bad_batch: rc $rc: $out"; fi
out=$("$bin" -config tiny -T 99 2>&1); rc=$?
if [ $rc -ne 0 ] && echo "$out" | grep -q "sequence length"; then echo "PASS cuda_bench_rejects_long_context"; else echo "FAIL cuda_bench_rejects_long_context: rc $rc: $out"; fi
out=$(OMP_NUM_THREADS=1 "$bin" -config tiny -steps 3 2>&1); rc=$?
n=$(echo "$out" | grep -c "^step [0-9]*: loss [0-9.]*, grad norm [0-9.]*, .* tokens/s")
if [ $rc -eq 0 ] && [ "$n" -eq 3 ] && echo "$out" | grep -q "memory plan"; then echo "PASS cuda_bench_tiny_steps"; else echo "FAIL cuda_bench_tiny_steps: rc $rc, $n step lines: $(echo "$out" | tail -3)"; fi
out=$(OMP_NUM_THREADS=1 "$bin" -config tiny -steps 2 -prec bf16 2>&1); rc=$?
n=$(echo "$out" | grep -c "^step [0-9]*: loss [0-9.]*")
if [ $rc -eq 0 ] && [ "$n" -eq 2 ]; then echo "PASS cuda_bench_tiny_bf16"; else echo "FAIL cuda_bench_tiny_bf16: rc $rc: $(echo "$out" | tail -2)"; fi
out=$(OMP_NUM_THREADS=1 "$bin" -config tiny -steps 2 -prec fp16 -recompute 1 2>&1); rc=$?
n=$(echo "$out" | grep -c "^step [0-9]*: loss [0-9.]*")
if [ $rc -eq 0 ] && [ "$n" -eq 2 ] && echo "$out" | grep -q "precision fp16, recompute"; then echo "PASS cuda_bench_tiny_fp16_recompute"; else echo "FAIL cuda_bench_tiny_fp16_recompute: rc $rc: $(echo "$out" | tail -2)"; fi
out=$("$bin" -config gpu -steps 0 2>&1); rc=$?
if [ $rc -eq 0 ] && echo "$out" | grep -q "total 6.97 GiB"; then echo "PASS cuda_bench_default_gpu_plan (bf16: $(echo "$out" | grep -o 'total [0-9.]* GiB'))"; else echo "FAIL cuda_bench_default_gpu_plan: rc $rc: $out"; fi
out=$("$bin" -prec fp8 2>&1); rc=$?
if [ $rc -ne 0 ] && echo "$out" | grep -q "prec must be"; then echo "PASS cuda_bench_rejects_bad_precision"; else echo "FAIL cuda_bench_rejects_bad_precision: rc $rc: $out"; fi
