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
