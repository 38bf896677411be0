# train/: the training program. The checkpoint module is in train/ckpt.mk.
-include train/ckpt.mk
MODULES += trainer
trainer_SRCS := train/flags.c train/trainer.c
PROGRAMS += train
train_SRCS := train/train.c
train_MODS := trainer gen ckpt plots tokenizer data model common
