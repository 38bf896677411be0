#!/usr/bin/env bash
# Every .cu file of the project (model/cuda, tests/cuda_harness) compiles with nvcc for
# sm_75 sm_80 sm_86 sm_89 sm_90 in one fat object, warnings as errors (nvcc and host
# compiler). Objects are cached in $BUILD/nvcc by a hash of the source, the headers and the
# flags, so a second run is fast. SKIPs with one line when nvcc is absent. comm.cu compiles
# twice: with NCCL (-DMOE_WITH_NCCL, where nccl.h is found) and without.
# CUDA_TEST_ARCHS="86" limits the architectures (e.g. on a slow machine).
# With cuDNN found (cudnn.h and libcudnn.so, as model/cuda/module.mk looks for them) every file
# is compiled with -DMOE_WITH_CUDNN, so model/cuda/attention_cudnn.cu is checked on its real
# cuDNN path, and that object is linked with convert.cu against libcudart and libcudnn into
# tests/cudnn_link_check.c, which runs here (its refusal path when there is no GPU).
set -u
BUILD=${BUILD:-build}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=$(command -v nvcc 2>/dev/null || true)
[ -z "$NVCC" ] && [ -x "$CUDA_HOME/bin/nvcc" ] && NVCC=$CUDA_HOME/bin/nvcc
if [ -z "$NVCC" ]; then
  echo "SKIP cuda_nvcc_compile: nvcc not found (PATH or \$CUDA_HOME/bin); the CUDA sources are still run through the CPU harness"
  exit 0
fi
archs=${CUDA_TEST_ARCHS:-"75 80 86 89 90"}
flags="-O3 -std=c++17 --threads 2 -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror,-fopenmp -I."
for a in $archs; do flags="$flags -gencode arch=compute_$a,code=sm_$a"; done
cudnn_libdir=""
if [ -f "$CUDA_HOME/include/cudnn.h" ] || [ -f /usr/include/cudnn.h ]; then
  for d in "$CUDA_HOME/lib64" "$CUDA_HOME/lib" /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib; do
    if [ -e "$d/libcudnn.so" ]; then cudnn_libdir=$d; break; fi
  done
fi
if [ -n "$cudnn_libdir" ]; then
  flags="$flags -DMOE_WITH_CUDNN"
  echo "# cuDNN found (libcudnn.so in $cudnn_libdir): compiling with -DMOE_WITH_CUDNN"
else
  echo "# cuDNN not found: model/cuda/attention_cudnn.cu compiles to its refusing entry points"
fi
out=$BUILD/nvcc
mkdir -p "$out"
hdr_hash=$( (echo "$flags"; "$NVCC" --version; cat model/cuda/*.cuh model/cuda/*.h model/layer_math.h tests/cuda_harness/*.h 2>/dev/null) | sha1sum | cut -c1-40)
# comm.cu: the NCCL collectives where nccl.h is found (as the Makefile builds it), and the
# single-process implementation of a build without NCCL
nccl_inc=""
for d in "$CUDA_HOME/include" /usr/include; do [ -f "$d/nccl.h" ] && { nccl_inc=$d; break; }; done
fail=0
compile() {  # src, label, extra flags
  local src=$1 label=$2 extra=$3
  local name; name=$(echo "$src$label" | tr '/ ()' '____')
  local key; key=$( (echo "$hdr_hash $extra"; cat "$src") | sha1sum | cut -c1-40)
  if [ -f "$out/$name.o" ] && [ "$(cat "$out/$name.key" 2>/dev/null)" = "$key" ]; then
    echo "PASS nvcc_compile $src$label (cached; archs $archs)"
    return
  fi
  rm -f "$out/$name.o" "$out/$name.key"
  local t0; t0=$(date +%s)
  if timeout 600 "$NVCC" $flags $extra -c "$src" -o "$out/$name.o" > "$out/$name.log" 2>&1; then
    echo "$key" > "$out/$name.key"
    echo "PASS nvcc_compile $src$label (archs $archs, $(( $(date +%s) - t0 )) s)"
  else
    echo "FAIL nvcc_compile $src$label: nvcc failed (archs $archs); first lines:"
    head -20 "$out/$name.log" | sed 's/^/  /'
    fail=1
  fi
}
for src in model/cuda/*.cu tests/cuda_harness/*.cu; do
  [ -e "$src" ] || continue
  if [ "$src" = model/cuda/comm.cu ]; then
    if [ -n "$nccl_inc" ]; then compile "$src" " (NCCL, $nccl_inc/nccl.h)" "-DMOE_WITH_NCCL -I$nccl_inc"
    else echo "SKIP nvcc_compile model/cuda/comm.cu (NCCL): nccl.h not found in $CUDA_HOME/include or /usr/include"; fi
    compile "$src" " (without NCCL)" ""
  else
    compile "$src" "" ""
  fi
done

# the cuDNN path linked and run (no GPU needed: it must refuse cleanly)
att=$out/model_cuda_attention_cudnn.cu.o cvt=$out/model_cuda_convert.cu.o
if [ -n "$cudnn_libdir" ] && [ -f "$att" ] && [ -f "$cvt" ]; then
  CC=${CC:-gcc}
  if "$CC" -std=c11 -O2 -Wall -Wextra -Werror -I. -I"$CUDA_HOME/include" tests/cudnn_link_check.c "$att" "$cvt" \
       -L"$CUDA_HOME/lib64" -L"$cudnn_libdir" -lcudart -lcudnn -lstdc++ -lm -o "$out/cudnn_link_check" \
       > "$out/cudnn_link.log" 2>&1; then
    LD_LIBRARY_PATH="$cudnn_libdir:$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$out/cudnn_link_check" || fail=1
  else
    echo "FAIL cudnn_link: linking tests/cudnn_link_check.c with the cuDNN objects failed; first lines:"
    head -20 "$out/cudnn_link.log" | sed 's/^/  /'
    fail=1
  fi
elif [ -z "$cudnn_libdir" ]; then
  echo "SKIP cudnn_link: cuDNN not found (cudnn.h and libcudnn.so under \$CUDA_HOME or the system directories)"
fi
exit $fail
