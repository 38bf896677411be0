# sample/: text generation from a checkpoint with the absorbed MLA KV cache.
# Module `gen`: the generation library (model/cpu/generate.c), linked by `sample` and the trainer.
MODULES += gen
gen_SRCS := model/cpu/generate.c

TEST_PROGS += test_generate
test_generate_SRCS := tests/test_generate.c
test_generate_MODS := gen model common

# `sample` needs the checkpoint module (train/ckpt.mk) and the tokenizer.
ifneq ($(wildcard train/ckpt.mk),)
PROGRAMS += sample
sample_SRCS := sample/sample.c
sample_MODS := gen ckpt model data tokenizer common

TEST_PROGS += test_generate_ckpt
test_generate_ckpt_SRCS := tests/test_generate_ckpt.c
test_generate_ckpt_MODS := gen ckpt model data tokenizer common
SHELL_TESTS += tests/test_sample.sh
endif
