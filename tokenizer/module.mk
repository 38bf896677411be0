# tokenizer: byte-level BPE (train, encode, decode, HF tokenizer.json).
# The command-line program is `bpe` (build/bpe), not `tokenizer`: the Makefile writes a
# program to $(BUILD)/NAME and this module's objects to $(BUILD)/tokenizer/, so a program
# called tokenizer would collide with that folder.
MODULES += tokenizer
tokenizer_SRCS := tokenizer/tokenizer.c tokenizer/tok_json.c tokenizer/tok_train.c

PROGRAMS += bpe
bpe_SRCS := tokenizer/main.c
bpe_MODS := tokenizer common

PROGRAMS += bench_tokenizer
bench_tokenizer_SRCS := tokenizer/bench.c
bench_tokenizer_MODS := tokenizer common

TEST_PROGS += test_tokenizer
test_tokenizer_SRCS := tests/test_tokenizer.c
test_tokenizer_MODS := tokenizer common

SHELL_TESTS += tests/test_tokenizer_hf.sh tests/test_tokenizer_cli.sh
