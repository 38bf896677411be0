MODULES += model
model_SRCS := model/config.c model/cpu/layers.c model/cpu/moe.c model/cpu/model.c
TEST_PROGS += test_model_grad
test_model_grad_SRCS := tests/test_model_grad.c
test_model_grad_MODS := model common
PROGRAMS += gen_shards
gen_shards_SRCS := tests/gen_shards.c
gen_shards_MODS := data common
