# common/: util.c and gemm.c are in LIB_SRCS from the top Makefile.
TEST_PROGS += test_common
test_common_SRCS = tests/test_common.c
