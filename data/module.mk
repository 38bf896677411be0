# data/: token shards, the dataloader, corpus preparation (`prepare`, `make data`).
MODULES += data
data_SRCS := data/shard.c data/dataloader.c data/corpus.c

TEST_PROGS += test_data
test_data_SRCS := tests/test_data.c
test_data_MODS := data common

TEST_PROGS += test_data_corpus
test_data_corpus_SRCS := tests/test_data_corpus.c
test_data_corpus_MODS := data common

PROGRAMS += prepare
prepare_SRCS := data/prepare.c
prepare_MODS := data tokenizer common

# `make data`: the built-in five-domain corpus (bible, gcide, jargon, foldoc, code) into
# data/cache/default/{train_000.bin,val_000.bin,tokenizer.json,meta.json}. The Debian
# packages are installed on demand. Cached: nothing happens while meta.json exists (prepare
# writes it last); delete the folder to rebuild.
DATA_CACHE := data/cache/default
data: $(DATA_CACHE)/meta.json
$(DATA_CACHE)/meta.json: | $(BUILD)/prepare
	@bash scripts/install_deps.sh bible-kjv dict-gcide dict-jargon dict-foldoc
	$(BUILD)/prepare --builtin --name default --out $(DATA_CACHE)

SHELL_TESTS += tests/test_prepare.sh

TEST_PROGS += test_data_fuzz
test_data_fuzz_SRCS := tests/test_data_fuzz.c
test_data_fuzz_MODS := data common
