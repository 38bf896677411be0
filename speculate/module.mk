# speculate/: routing traces (.trace), the expert speculator, baselines, offload simulation.
#
# The module and the program share the name `speculate`, so they share one speculate_SRCS:
# libspeculate.a also holds main.o, which no other program pulls in (it defines only main).
MODULES += speculate
PROGRAMS += speculate
speculate_SRCS := speculate/trace.c speculate/synth.c speculate/eval.c speculate/mlp.c speculate/train.c \
                  speculate/cache.c speculate/main.c
speculate_MODS := plots common

TEST_PROGS += test_trace
test_trace_SRCS := tests/test_trace.c
test_trace_MODS := speculate common

TEST_PROGS += test_spec
test_spec_SRCS := tests/test_spec.c
test_spec_MODS := speculate common

TEST_PROGS += test_spec_cache
test_spec_cache_SRCS := tests/test_spec_cache.c
test_spec_cache_MODS := speculate common

# make speculate TRACES="a.trace b.trace" [SPEC_FLAGS="--epochs 10"] [SPEC_OUT=runs/speculate]
# OMP_WAIT_POLICY=passive: idle OpenMP threads sleep instead of spinning at the barriers of each
# training step (spinning threads took the cores from the working ones: 2.4x slower on a busy machine)
TRACES ?=
SPEC_OUT ?= runs/speculate
SPEC_FLAGS ?=
speculate: $(BUILD)/speculate
	@if [ -z "$(TRACES)" ]; then echo "usage: make speculate TRACES=path.trace [SPEC_FLAGS=...] (or SPEC_FLAGS=--synthetic TRACES=none)"; exit 1; fi
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-passive} $(BUILD)/speculate --out $(SPEC_OUT) $(SPEC_FLAGS) $(filter-out none,$(TRACES))
SHELL_TESTS += tests/test_speculate.sh
