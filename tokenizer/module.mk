# tokenizer: byte-level BPE (train, encode, decode, HF tokenizer.json).
# The module and the command-line program share the name `tokenizer` and so one SRCS list:
# libtokenizer.a also holds main.o, which defines only main() and static functions, so
# the linker never pulls it into other programs (their own main is defined before).
MODULES += tokenizer
PROGRAMS += tokenizer
tokenizer_SRCS := tokenizer/tokenizer.c tokenizer/tok_json.c tokenizer/tok_train.c tokenizer/main.c
tokenizer_MODS := common

PROGRAMS += bench_tokenizer
BENCH_PROGS += bench_tokenizer
bench_tokenizer_SRCS := tokenizer/bench.c
bench_tokenizer_MODS := tokenizer common

TEST_PROGS += test_tokenizer
test_tokenizer_SRCS := tests/test_tokenizer.c
test_tokenizer_MODS := tokenizer common

SHELL_TESTS += tests/test_tokenizer_hf.sh tests/test_tokenizer_cli.sh
