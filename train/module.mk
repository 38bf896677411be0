# train/: the training program. The checkpoint module is in train/ckpt.mk.
-include train/ckpt.mk
MODULES += trainer
trainer_SRCS := train/flags.c train/trainer.c
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
