# speculate/: routing traces (.trace), the expert speculator, baselines, offload simulation.
MODULES += speculate
speculate_SRCS := speculate/trace.c

TEST_PROGS += test_trace
test_trace_SRCS := tests/test_trace.c
test_trace_MODS := speculate common
