# train/: the training program. The checkpoint module is in train/ckpt.mk.
-include train/ckpt.mk
MODULES += trainer
trainer_SRCS := train/flags.c train/trainer.c train/dp.c
PROGRAMS += train
train_SRCS := train/train.c
train_MODS := trainer gen ckpt plots tokenizer data model common
PROGRAMS += ckpt_compare
ckpt_compare_SRCS := tests/ckpt_compare.c
ckpt_compare_MODS := ckpt data model common
SHELL_TESTS += tests/test_train.sh
PROGRAMS += bench_train
bench_train_SRCS := train/bench_train.c
bench_train_MODS := model common
PROGRAMS += bench_gemm
bench_gemm_SRCS := train/bench_gemm.c
bench_gemm_MODS := common

# the same benchmark linked against OpenBLAS (OpenMP build), for the backend comparison
$(BUILD)/obj/common/gemm_openblas.o: common/gemm.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -DMOE_GEMM_OPENBLAS -I/usr/include/x86_64-linux-gnu/openblas-openmp $(CFLAGS) -c $< -o $@
$(BUILD)/bench_gemm_openblas: $(BUILD)/obj/train/bench_gemm.o $(BUILD)/obj/common/gemm_openblas.o $(BUILD)/obj/common/util.o
	$(CC) $(LDFLAGS) $^ -L/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -lm -o $@

# The trainer with the CUDA backend (--device auto|cuda): train_gpu, built with nvcc (make
# train uses it when a GPU is visible), and train_hx, the same trainer with the CUDA kernels
# compiled through the CUDA-on-CPU harness, so that the GPU path of the loop is tested here.
TRAIN_CUDA_LIBS := $(BUILD)/lib/libgen.a $(BUILD)/lib/libckpt.a $(BUILD)/lib/libplots.a $(BUILD)/lib/libtokenizer.a \
                   $(BUILD)/lib/libdata.a
$(BUILD)/obj-cuda/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -DMOE_WITH_CUDA -I$(CUDA_HOME)/include $(CFLAGS) -c $< -o $@
ifneq ($(HAVE_CUDA_HEADERS),)
PROGRAMS_EXTRA += train_hx
$(BUILD)/train_hx: $(BUILD)/obj/train/train.o $(BUILD)/obj/train/flags.o $(BUILD)/obj-cuda/train/trainer.o $(BUILD)/obj-cuda/train/dp.o \
		$(TRAIN_CUDA_LIBS) $(BUILD)/lib/libcudahx.a $(BUILD)/lib/libcudahrt.a $(BUILD)/lib/libcudaplan.a \
		$(BUILD)/lib/libmodel.a $(BUILD)/lib/libcommon.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -lstdc++ -o $@
SHELL_TESTS += tests/test_train_cuda.sh tests/test_train_dp.sh
endif
$(BUILD)/train_gpu: $(BUILD)/obj/train/train.o $(BUILD)/obj/train/flags.o $(BUILD)/obj-cuda/train/trainer.o $(BUILD)/obj-cuda/train/dp.o \
		$(TRAIN_CUDA_LIBS) $(CUDA_SRCS:%.cu=$(BUILD)/nvcc-fat/%.o) $(BUILD)/lib/libcudaplan.a \
		$(BUILD)/lib/libmodel.a $(BUILD)/lib/libcommon.a
	$(CC) $(LDFLAGS) $^ $(CUDA_LIBS) $(LDLIBS) -lstdc++ -o $@
