#!/usr/bin/env bash
# pretrained/nf4_cuda.cu compiles with nvcc (warnings as errors) for one architecture; the
# kernel's results are checked through the CUDA-on-CPU harness by test_nf4_cuda. SKIP without nvcc.
set -u
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if [ ! -x "$NVCC" ]; then echo "SKIP nf4_cuda_nvcc: nvcc not found"; exit 0; fi
tmp=$(mktemp -d /tmp/test_collect_nvcc.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
if "$NVCC" -O3 -std=c++17 -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror -arch=sm_80 -I. \
     -c pretrained/nf4_cuda.cu -o "$tmp/nf4_cuda.o" > "$tmp/log" 2>&1; then
  echo "PASS nf4_cuda_nvcc_compiles"
else
  echo "FAIL nf4_cuda_nvcc_compiles: $(head -3 "$tmp/log" | tr '\n' ' ')"
fi
exit 0
