# train/ckpt.mk: the checkpoint file format and run directories (train/checkpoint.c).
# Included from train/module.mk.
MODULES += ckpt
ckpt_SRCS := train/checkpoint.c

TEST_PROGS += test_checkpoint test_checkpoint_fuzz
test_checkpoint_SRCS := tests/test_checkpoint.c
test_checkpoint_MODS := ckpt data model common
test_checkpoint_fuzz_SRCS := tests/test_checkpoint_fuzz.c
test_checkpoint_fuzz_MODS := ckpt data model common
SHELL_TESTS += tests/test_ckpt_kill.sh
