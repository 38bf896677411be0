# speculate/: routing traces (.trace), the expert speculator, baselines, offload simulation.
MODULES += speculate
speculate_SRCS := speculate/trace.c speculate/synth.c speculate/eval.c speculate/mlp.c speculate/train.c speculate/cache.c

TEST_PROGS += test_trace
test_trace_SRCS := tests/test_trace.c
test_trace_MODS := speculate common

TEST_PROGS += test_spec
test_spec_SRCS := tests/test_spec.c
test_spec_MODS := speculate common

TEST_PROGS += test_spec_cache
test_spec_cache_SRCS := tests/test_spec_cache.c
test_spec_cache_MODS := speculate common
