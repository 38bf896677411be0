# pretrained/: Hugging Face interop (safetensors, config.json), NF4 4-bit quantization,
# the forward pass of pretrained MoE models, and the `collect` trace collector.
MODULES += pretrained
pretrained_SRCS := pretrained/safetensors.c pretrained/nf4.c pretrained/hfconfig.c pretrained/ptmodel.c pretrained/tiny.c

TEST_PROGS += test_safetensors
test_safetensors_SRCS := tests/test_safetensors.c
test_safetensors_MODS := pretrained tokenizer common

TEST_PROGS += test_nf4
test_nf4_SRCS := tests/test_nf4.c tests/test_nf4_data.c
test_nf4_MODS := pretrained tokenizer common

TEST_PROGS += test_pretrained
test_pretrained_SRCS := tests/test_pretrained.c
test_pretrained_MODS := pretrained tokenizer common
