# pretrained/: Hugging Face interop (safetensors, config.json), NF4 4-bit quantization,
# the forward pass of pretrained MoE models, and the `collect` trace collector.
MODULES += pretrained
pretrained_SRCS := pretrained/safetensors.c pretrained/nf4.c pretrained/hfconfig.c pretrained/ptmodel.c pretrained/tiny.c pretrained/export.c

TEST_PROGS += test_safetensors
test_safetensors_SRCS := tests/test_safetensors.c
test_safetensors_MODS := pretrained tokenizer common

TEST_PROGS += test_nf4
test_nf4_SRCS := tests/test_nf4.c tests/test_nf4_data.c
test_nf4_MODS := pretrained tokenizer common

TEST_PROGS += test_pretrained
test_pretrained_SRCS := tests/test_pretrained.c
test_pretrained_MODS := pretrained speculate tokenizer common

PROGRAMS += collect
collect_SRCS := pretrained/collect.c
collect_MODS := pretrained speculate data tokenizer common

PROGRAMS += pt_tiny
pt_tiny_SRCS := pretrained/pt_tiny.c
pt_tiny_MODS := pretrained tokenizer common

# `make collect MODEL=dir DATA="imdb.jsonl:text news.csv:2" OUT=traces/x.trace`
# Without MODEL: a tiny random deepseek model (build/tiny_deepseek, written by pt_tiny) over
# the built-in corpus's validation shard (run `make data` first) or, without it, over the
# repository's docs. COLLECT_FLAGS adds flags (e.g. "--n 3333 --max-len 512 --batch 16").
COLLECT_TINY := $(BUILD)/tiny_deepseek
MODEL ?= $(COLLECT_TINY)
DATA ?= $(if $(wildcard data/cache/default/val_000.bin),data/cache/default/val_000.bin,docs=docs)
OUT ?= traces/collect.trace
COLLECT_FLAGS ?=
collect: $(BUILD)/collect $(BUILD)/pt_tiny
	@if [ "$(MODEL)" = "$(COLLECT_TINY)" ] && [ ! -f $(COLLECT_TINY)/config.json ]; then $(BUILD)/pt_tiny --out $(COLLECT_TINY); fi
	$(BUILD)/collect --model $(MODEL) --data "$(DATA)" --out $(OUT) $(COLLECT_FLAGS)
SHELL_TESTS += tests/test_collect.sh

TEST_PROGS += test_pretrained_export
test_pretrained_export_SRCS := tests/test_pretrained_export.c
test_pretrained_export_MODS := pretrained model tokenizer common

PROGRAMS += export
export_SRCS := pretrained/export_main.c
export_MODS := pretrained ckpt data model tokenizer common
SHELL_TESTS += tests/test_collect_hf.sh

PROGRAMS += bench_nf4
bench_nf4_SRCS := pretrained/bench_nf4.c
bench_nf4_MODS := pretrained common
SHELL_TESTS += tests/test_collect_export.sh

# CUDA NF4 kernels (pretrained/nf4_cuda.cu): tested through the CUDA-on-CPU harness of
# model/cuda/module.mk (g++ build, no GPU needed) when the CUDA headers exist; nvcc compile
# check in tests/test_collect_nvcc.sh.
PT_CUDA_HOME := $(or $(CUDA_HOME),/usr/local/cuda)
ifneq ($(wildcard $(PT_CUDA_HOME)/include/cuda_runtime.h),)
$(BUILD)/lib/libpretrainedcuh.a: $(BUILD)/cuh/pretrained/nf4_cuda.o
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
TEST_PROGS += test_nf4_cuda
test_nf4_cuda_SRCS := tests/test_nf4_cuda.c
test_nf4_cuda_MODS := pretrainedcuh cudahrt pretrained tokenizer common
$(BUILD)/tests/test_nf4_cuda: LDLIBS += -lstdc++
endif
SHELL_TESTS += tests/test_collect_nvcc.sh
