# model/cuda: the CUDA backend (kernels in .cu files behind the C interface cuda_ops.h) and
# its verification without a GPU:
#   - the CUDA-on-CPU harness (tests/cuda_harness): every .cu file compiled by g++ as host
#     C++ (-include tests/cuda_harness/cuda_harness.h) into $(BUILD)/cuh/, kernels run as
#     fibers; test_cuda_harness (the harness itself) and test_cuda_layers / _attention / _moe (each kernel
#     against the CPU reference of model/layers.h and model/cpu/moe.c);
#   - tests/test_cuda_nvcc.sh: every .cu file compiled by nvcc, warnings as errors (SKIP
#     without nvcc), objects cached in $(BUILD)/nvcc;
#   - make cuda: fat objects for all target architectures (needs nvcc);
#   - make test-gpu: the kernel comparisons built with nvcc, run on a real GPU;
#   - cuDNN, when found: the optional flash-attention path of attention_cudnn.cu (see below).

CUDA_HOME ?= /usr/local/cuda
NVCC ?= $(shell command -v nvcc 2>/dev/null || (test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc))
CUDA_ARCHS ?= 75 80 86 89 90
# machine code for each architecture, plus PTX of the newest so that later GPUs (Blackwell,
# sm_100/sm_120) JIT-compile the kernels instead of finding none
CUDA_GENCODE := $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
                -gencode arch=compute_$(lastword $(CUDA_ARCHS)),code=compute_$(lastword $(CUDA_ARCHS))
NVCC_FLAGS ?= -O3 -std=c++17 -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror,-fopenmp

CUDA_SRCS := $(sort $(wildcard model/cuda/*.cu))

# cuDNN (optional): with its header and library found, the nvcc builds compile
# model/cuda/attention_cudnn.cu with -DMOE_WITH_CUDNN (the cuDNN flash-attention path) and the
# CUDA programs link -lcudnn; without them that file compiles to entry points that refuse ("unavailable"). The
# CUDA-on-CPU harness always compiles those refusing entry points (cuDNN cannot run on host memory).
CUDNN_HEADER := $(firstword $(wildcard $(CUDA_HOME)/include/cudnn.h /usr/include/cudnn.h))
CUDNN_LIBDIR := $(patsubst %/,%,$(dir $(firstword $(wildcard $(CUDA_HOME)/lib64/libcudnn.so $(CUDA_HOME)/lib/libcudnn.so \
                  /usr/lib/x86_64-linux-gnu/libcudnn.so /usr/lib64/libcudnn.so /usr/lib/libcudnn.so))))
HAVE_CUDNN := $(if $(and $(CUDNN_HEADER),$(CUDNN_LIBDIR)),1,)
CUDNN_DEFS := $(if $(HAVE_CUDNN),-DMOE_WITH_CUDNN,)
CUDNN_LDLIBS := $(if $(HAVE_CUDNN),-L$(CUDNN_LIBDIR) -lcudnn,)

# NCCL (data-parallel training on several GPUs, comm.cu): used when both its header and its
# library are found; otherwise comm.cu builds a single-process implementation and --gpus N > 1 is refused
NCCL_HEADER := $(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h))
NCCL_LIB := $(firstword $(wildcard $(CUDA_HOME)/lib64/libnccl.so $(CUDA_HOME)/lib/libnccl.so \
              /usr/lib/x86_64-linux-gnu/libnccl.so /usr/lib/aarch64-linux-gnu/libnccl.so /usr/lib64/libnccl.so))
ifneq ($(and $(NCCL_HEADER),$(NCCL_LIB)),)
HAVE_NCCL := 1
NCCL_CPPFLAGS := -DMOE_WITH_NCCL -I$(patsubst %/,%,$(dir $(NCCL_HEADER)))
NCCL_LDLIBS := -L$(patsubst %/,%,$(dir $(NCCL_LIB))) -Wl,-rpath,$(patsubst %/,%,$(dir $(NCCL_LIB))) -lnccl
endif
HX_KERNEL_SRCS := tests/cuda_harness/harness_kernels.cu
HAVE_CUDA_HEADERS := $(wildcard $(CUDA_HOME)/include/cuda_runtime.h)

# the planner and peak table: plain C, always built
MODULES += cudaplan
cudaplan_SRCS := model/cuda/plan.c
TEST_PROGS += test_cuda_plan
test_cuda_plan_SRCS := tests/test_cuda_plan.c
test_cuda_plan_MODS := cudaplan model common

HX_CXXFLAGS := -x c++ -std=c++17 $(OPT) -Wall -Wextra -fopenmp -DMOE_CUDA_HARNESS \
               -include tests/cuda_harness/cuda_harness.h -I$(CUDA_HOME)/include

ifneq ($(HAVE_CUDA_HEADERS),)
# .cu -> host object through the harness
$(BUILD)/cuh/%.o: %.cu tests/cuda_harness/cuda_harness.h tests/cuda_harness/wmma.h $(wildcard model/cuda/*.cuh)
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(HX_CXXFLAGS) -c $< -o $@

$(BUILD)/cuh/tests/cuda_harness/harness.o: tests/cuda_harness/harness.cc tests/cuda_harness/cuda_harness.h tests/cuda_harness/wmma.h
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) -std=c++17 $(OPT) -Wall -Wextra -fopenmp -DMOE_CUDA_HARNESS -I$(CUDA_HOME)/include -c $< -o $@

# libcudahrt: the harness runtime; libcudahx: the backend's kernels as host code;
# libcudahk: the harness's own test kernels
$(BUILD)/lib/libcudahrt.a: $(BUILD)/cuh/tests/cuda_harness/harness.o
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
$(BUILD)/lib/libcudahx.a: $(CUDA_SRCS:%.cu=$(BUILD)/cuh/%.o)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
$(BUILD)/lib/libcudahk.a: $(HX_KERNEL_SRCS:%.cu=$(BUILD)/cuh/%.o)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
# one archive per .cu file (libhx_NAME.a), so that a kernel test links only the files it tests
define HX_FILE_LIB
$(BUILD)/lib/libhx_$(1).a: $(BUILD)/cuh/model/cuda/$(1).o
	@mkdir -p $$(dir $$@)
	rm -f $$@ && ar rcs $$@ $$^
endef
$(foreach f,$(notdir $(CUDA_SRCS:.cu=)),$(eval $(call HX_FILE_LIB,$(f))))
HX_CORE := hx_layers hx_optim hx_convert hx_runtime

# the shared-memory collectives of the harness build of comm.cu (processes stand for GPUs)
TEST_PROGS += test_cuda_comm
test_cuda_comm_SRCS := tests/test_cuda_comm.c
test_cuda_comm_MODS := hx_comm cudahrt common
$(BUILD)/tests/test_cuda_comm: LDLIBS += -lstdc++

TEST_PROGS += test_cuda_harness
test_cuda_harness_SRCS := tests/test_cuda_harness.c
test_cuda_harness_MODS := cudahk cudahrt common
$(BUILD)/tests/test_cuda_harness: LDLIBS += -lstdc++

# the kernels and the whole model against the CPU reference, through the harness
CUDA_CMP_TESTS := test_cuda_layers test_cuda_attention test_cuda_attention_cudnn test_cuda_moe test_cuda_grouped_tc test_cuda_model
TEST_PROGS += $(CUDA_CMP_TESTS)
$(foreach t,$(CUDA_CMP_TESTS),$(eval $(t)_SRCS := tests/$(t).c))
test_cuda_layers_MODS := $(HX_CORE) cudahrt cudaplan model common
test_cuda_attention_MODS := hx_attention hx_attention_tc $(HX_CORE) cudahrt cudaplan model common
test_cuda_attention_cudnn_MODS := hx_attention_cudnn hx_attention hx_attention_tc $(HX_CORE) cudahrt cudaplan model common
test_cuda_moe_MODS := hx_moe hx_grouped_tc $(HX_CORE) cudahrt cudaplan model common
test_cuda_grouped_tc_MODS := hx_grouped_tc $(HX_CORE) cudahrt cudaplan model common
test_cuda_model_MODS := cudahx cudahrt cudaplan model common
$(CUDA_CMP_TESTS:%=$(BUILD)/tests/%): LDLIBS += -lstdc++

# cuda_bench through the harness (smoke test with the tiny config: tests/test_cuda_bench.sh)
PROGRAMS += cuda_bench_hx
cuda_bench_hx_SRCS := model/cuda/bench_cuda.c
cuda_bench_hx_MODS := cudahx cudahrt cudaplan model common
$(BUILD)/cuda_bench_hx: LDLIBS += -lstdc++
SHELL_TESTS += tests/test_cuda_bench.sh
else
SHELL_TESTS += tests/test_cuda_skip.sh
endif

SHELL_TESTS += tests/test_cuda_nvcc.sh

# ---- for programs that use the GPU when nvcc exists (e.g. train/module.mk, included after this
# file): link $(CUDA_OBJS) with $(CUDA_LDLIBS) and compile with $(CUDA_CPPFLAGS) when
# CUDA_ENABLED is 1; include model/cuda/cuda_model.h under #ifdef MOE_WITH_CUDA; at run time
# cu_device_info() == 0 means "no GPU visible: use the CPU". A build without nvcc leaves
# CUDA_ENABLED empty and the program CPU-only.
CUDA_ENABLED := $(if $(NVCC),1,)
CUDA_OBJS := $(CUDA_SRCS:%.cu=$(BUILD)/nvcc-fat/%.o) $(BUILD)/lib/libcudaplan.a
CUDA_LDLIBS := -L$(CUDA_HOME)/lib64 -lcudart -lcublas $(CUDNN_LDLIBS) $(NCCL_LDLIBS) -lstdc++
CUDA_CPPFLAGS := -DMOE_WITH_CUDA -I$(CUDA_HOME)/include

# ---- real CUDA builds (need nvcc) ----------------------------------------------------------
.PHONY: cuda test-gpu
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -lcudart -lcublas $(CUDNN_LDLIBS) $(NCCL_LDLIBS)

CUDA_HDRS := $(wildcard model/cuda/*.cuh model/cuda/*.h) model/layer_math.h model/model.h model/config.h
$(BUILD)/nvcc-fat/%.o: %.cu $(CUDA_HDRS)
	@test -n "$(NVCC)" || { echo "error: nvcc not found (set CUDA_HOME or NVCC)"; exit 1; }
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) $(CUDNN_DEFS) $(CUDA_GENCODE) -I. -c $< -o $@
# comm.cu: the NCCL collectives where NCCL was found (rebuilt when that changes)
$(BUILD)/nvcc-fat/model/cuda/comm.o: NVCC_FLAGS += $(NCCL_CPPFLAGS)
$(BUILD)/nvcc-fat/model/cuda/comm.o: $(BUILD)/nvcc-fat/nccl-$(if $(HAVE_NCCL),on,off).stamp
$(BUILD)/nvcc-fat/nccl-%.stamp:
	@mkdir -p $(dir $@)
	@rm -f $(BUILD)/nvcc-fat/nccl-*.stamp && touch $@

# every .cu file as a fat object for sm_75 sm_80 sm_86 sm_89 sm_90
cuda: $(CUDA_SRCS:%.cu=$(BUILD)/nvcc-fat/%.o)

CUDA_CMP_TESTS ?= test_cuda_layers test_cuda_attention test_cuda_attention_cudnn test_cuda_moe test_cuda_grouped_tc test_cuda_model
$(BUILD)/gpu/%: tests/%.c $(CUDA_SRCS:%.cu=$(BUILD)/nvcc-fat/%.o) $(BUILD)/lib/libcudaplan.a $(BUILD)/lib/libmodel.a \
		$(BUILD)/lib/libcommon.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -I$(CUDA_HOME)/include $(LDFLAGS) $^ $(CUDA_LIBS) $(LDLIBS) -lstdc++ -o $@

# training steps of the default GPU config on a real GPU: tokens/s and MFU
$(BUILD)/gpu/cuda_bench: model/cuda/bench_cuda.c $(CUDA_SRCS:%.cu=$(BUILD)/nvcc-fat/%.o) $(BUILD)/lib/libcudaplan.a \
		$(BUILD)/lib/libmodel.a $(BUILD)/lib/libcommon.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -I$(CUDA_HOME)/include $(LDFLAGS) $^ $(CUDA_LIBS) $(LDLIBS) -lstdc++ -o $@
.PHONY: bench-gpu
bench-gpu: $(BUILD)/gpu/cuda_bench
	$(BUILD)/gpu/cuda_bench -config gpu -steps 10

# the same comparisons with the nvcc build, on a real GPU
test-gpu: $(CUDA_CMP_TESTS:%=$(BUILD)/gpu/%)
	@OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} tests/run.sh $(BUILD) $(CUDA_CMP_TESTS:%=$(BUILD)/gpu/%) --
