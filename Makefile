# moe.c — every entry point. `make train`, `make test`, `make report`, `make data`,
# `make collect`, `make speculate`, `make bench`.
#
# Each folder adds to the build in its own module.mk:
#   MODULES    += mod       with mod_SRCS = C sources        -> $(BUILD)/lib/libmod.a
#   PROGRAMS   += name      with name_SRCS = main sources, name_MODS = modules it links,
#                           dependents first (e.g. `data tokenizer common`) -> $(BUILD)/name
#   TEST_PROGS += name      same, for a test program          -> $(BUILD)/tests/name
#   SHELL_TESTS += tests/x.sh (run with BUILD set; print PASS/FAIL/SKIP lines)
#
# SAN=1 builds everything with AddressSanitizer + UndefinedBehaviorSanitizer into build-san/.
# GEMM=openblas links OpenBLAS (OpenMP build) instead of oneDNN for the CPU GEMM.

SHELL := /bin/bash
CC ?= gcc
ifeq ($(CC),cc)
CC := gcc
endif
CXX ?= g++
SAN ?= 0
GEMM ?= dnnl

ifeq ($(SAN),1)
BUILD ?= build-san
OPT ?= -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
SANLD := -fsanitize=address,undefined
else
BUILD ?= build
OPT ?= -O3 -g -march=native
SANLD :=
endif

CPPFLAGS += -D_GNU_SOURCE -I. -MMD -MP
CFLAGS += -std=c11 $(OPT) -Wall -Wextra -fopenmp
CXXFLAGS += -std=c++17 $(OPT) -Wall -Wextra -fopenmp
LDLIBS += -lpcre2-8 -lcjson -lz -lm
LDFLAGS += -fopenmp $(SANLD)

ifeq ($(GEMM),openblas)
CPPFLAGS += -DMOE_GEMM_OPENBLAS -I/usr/include/x86_64-linux-gnu/openblas-openmp
LDLIBS += -L/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas
else
LDLIBS += -ldnnl
endif

MODULES :=
PROGRAMS :=
PROGRAMS_EXTRA :=
TEST_PROGS :=
SHELL_TESTS :=

include $(sort $(wildcard */module.mk */*/module.mk))


.PHONY: all test test-san bench train data report collect speculate clean deps test-gpu
.DEFAULT_GOAL := all

all: $(PROGRAMS:%=$(BUILD)/%) $(PROGRAMS_EXTRA:%=$(BUILD)/%) $(TEST_PROGS:%=$(BUILD)/tests/%)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

define MODULE_RULE
$(BUILD)/lib/lib$(1).a: $$($(1)_SRCS:%.c=$(BUILD)/obj/%.o)
	@mkdir -p $$(dir $$@)
	rm -f $$@ && ar rcs $$@ $$^
endef
$(foreach m,$(MODULES),$(eval $(call MODULE_RULE,$(m))))

# $(1) = output path, $(2) = program name
define LINK_RULE
$(1): $$($(2)_SRCS:%.c=$(BUILD)/obj/%.o) $$($(2)_MODS:%=$(BUILD)/lib/lib%.a)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) $$^ $$(LDLIBS) -o $$@
endef
$(foreach p,$(PROGRAMS),$(eval $(call LINK_RULE,$(BUILD)/$(p),$(p))))
$(foreach t,$(TEST_PROGS),$(eval $(call LINK_RULE,$(BUILD)/tests/$(t),$(t))))

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---------------------------------------------------------------------------------------
# tests: unit tests, gradient checks, end-to-end runs. Ends with "N passed, N failed, N skipped".
deps:
	@bash scripts/install_deps.sh

test: deps
	@$(MAKE) --no-print-directory all
	@OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} tests/run.sh $(BUILD) $(TEST_PROGS:%=$(BUILD)/tests/%) -- $(SHELL_TESTS)

# The same suite under AddressSanitizer + UndefinedBehaviorSanitizer.
test-san:
	@$(MAKE) --no-print-directory test SAN=1

clean:
	rm -rf build build-san

# ---------------------------------------------------------------------------------------
# Training: builds, installs what is missing, prepares the default corpus (once, cached in
# data/cache/), then trains. NAME=run name, RESUME=1 continues it, ARGS="..." adds flags.
NAME ?= default
RESUME ?= 0
ARGS ?=
# With nvcc and a visible GPU (nvidia-smi -L) it builds and runs build/train_gpu (the CUDA
# backend, which still falls back to the CPU if the runtime finds no device); otherwise the
# CPU trainer build/train.
train: deps
	@$(MAKE) --no-print-directory data
	@if [ -n "$(CUDA_ENABLED)" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "GPU found: building the CUDA trainer ($(BUILD)/train_gpu)"; \
	  $(MAKE) --no-print-directory $(BUILD)/train_gpu || exit 1; prog=./$(BUILD)/train_gpu; \
	else \
	  echo "no GPU visible$(if $(CUDA_ENABLED),, (and no nvcc)): training on the CPU"; \
	  $(MAKE) --no-print-directory $(BUILD)/train || exit 1; prog=./$(BUILD)/train; \
	fi; \
	if [ "$(RESUME)" = "1" ]; then \
	  echo "$$prog --resume $(NAME) $(ARGS)"; $$prog --resume $(NAME) $(ARGS); \
	else \
	  echo "$$prog --name $(NAME) $(ARGS)"; $$prog --name $(NAME) $(ARGS); \
	fi

# Benchmarks (not tests): ratios measured in the same run.
bench: deps
	@$(MAKE) --no-print-directory $(BUILD)/bench_train $(BUILD)/bench_gemm $(BUILD)/bench_gemm_openblas $(BENCH_PROGS:%=$(BUILD)/%)
	@echo "== GEMM backends on the model's shapes (each in its own process) =="
	@./$(BUILD)/bench_gemm && ./$(BUILD)/bench_gemm_openblas
	@echo "== CPU training throughput (default config) =="
	@OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} ./$(BUILD)/bench_train 10
	@for b in $(BENCH_PROGS); do echo "== $$b =="; ./$(BUILD)/$$b || exit 1; done
	@if [ -n "$(CUDA_ENABLED)" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "== GPU training throughput and MFU =="; $(MAKE) --no-print-directory bench-gpu; \
	else echo "== GPU section skipped: no GPU visible (nvidia-smi -L)$(if $(CUDA_ENABLED),, or no nvcc) =="; fi

# Reports: RUN=name regenerates runs/name/report.html; RUNS="a b c" compares runs side by
# side into runs/compare/compare.html.
RUN ?= $(NAME)
RUNS ?=
report:
	@$(MAKE) --no-print-directory $(BUILD)/report
	@if [ -n "$(RUNS)" ]; then \
	  ./$(BUILD)/report --compare runs/compare $(foreach r,$(RUNS),runs/$(r)); \
	else \
	  ./$(BUILD)/report runs/$(RUN); \
	fi
