# sample/: text generation from a checkpoint with the absorbed MLA KV cache.
# Module `gen`: the generation library (model/cpu/generate.c), linked by `sample` and the trainer.
MODULES += gen
gen_SRCS := model/cpu/generate.c

TEST_PROGS += test_generate
test_generate_SRCS := tests/test_generate.c
test_generate_MODS := gen model common
