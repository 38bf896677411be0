# data/: token shards, the dataloader, corpus preparation (`prepare`, `make data`).
MODULES += data
data_SRCS := data/shard.c data/dataloader.c data/corpus.c

TEST_PROGS += test_data
test_data_SRCS := tests/test_data.c
test_data_MODS := data common

TEST_PROGS += test_data_corpus
test_data_corpus_SRCS := tests/test_data_corpus.c
test_data_corpus_MODS := data common
