MODULES += common
common_SRCS := common/util.c common/gemm.c
TEST_PROGS += test_common
test_common_SRCS := tests/test_common.c
test_common_MODS := common
