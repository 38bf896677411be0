// Token shards (.bin): the only format the trainer reads tokens from.
//
// Layout, all integers little-endian:
//   ShardHeader (64 bytes)
//     char     magic[8]      "MOETOKS\0"
//     uint32   version       1
//     uint32   token_bytes   2 (uint16 ids, vocab <= 65535) or 4 (uint32 ids)
//     uint32   vocab_size
//     uint32   n_domains
//     uint64   n_tokens
//     uint64   n_docs
//     uint32   header_crc    CRC-32C of the 40 bytes above
//     uint32   reserved[5]   zero
//   domain table: n_domains x char[32] (NUL-padded domain names)
//   doc table:    n_docs x { uint64 start_token; uint32 domain; uint32 reserved }
//   tokens:       n_tokens x token_bytes
//   uint32 crc32c over the domain table, doc table and tokens
// Readers check the magic, version, sizes against the file length and both checksums,
// and name the file and the field that is wrong.
#ifndef MOE_SHARD_H
#define MOE_SHARD_H

#include <stdint.h>

#include "../common/util.h"

#define SHARD_MAGIC "MOETOKS"
#define SHARD_VERSION 1
#define SHARD_DOMAIN_NAME_LEN 32

typedef struct {
    char path[1024];
    int token_bytes;
    int vocab_size;
    int n_domains;
    int64_t n_tokens;
    int64_t n_docs;
    char (*domain_names)[SHARD_DOMAIN_NAME_LEN];  // (n_domains)
    int64_t *doc_start;                           // (n_docs) first token of each document
    int32_t *doc_domain;                          // (n_docs)
    const void *tokens;                           // (n_tokens) uint16 or uint32, inside the mapping
    void *map;
    size_t map_len;
} Shard;

// Write a shard atomically (tmp + fsync + rename). tokens are uint32 ids < vocab_size;
// token_bytes is chosen from vocab_size. doc_start[0] must be 0, increasing.
int shard_write(const char *path, const uint32_t *tokens, int64_t n_tokens, int vocab_size,
                const int64_t *doc_start, const int32_t *doc_domain, int64_t n_docs,
                const char *const *domain_names, int n_domains, MoeErr *err);
// Same with an explicit token width: token_bytes 2 or 4 (0 = chosen from vocab_size). Fails,
// naming the file, when vocab_size does not fit the width (2 bytes: vocab_size <= 65535).
int shard_write_ex(const char *path, const uint32_t *tokens, int64_t n_tokens, int vocab_size, int token_bytes,
                   const int64_t *doc_start, const int32_t *doc_domain, int64_t n_docs,
                   const char *const *domain_names, int n_domains, MoeErr *err);
// The token width shard_write picks: 2 when vocab_size <= 65535, else 4.
int shard_token_bytes_for_vocab(int vocab_size);
// Open (mmap) and fully validate a shard.
int shard_open(Shard *s, const char *path, MoeErr *err);
void shard_close(Shard *s);
static inline uint32_t shard_token(const Shard *s, int64_t i) {
    return s->token_bytes == 2 ? ((const uint16_t *)s->tokens)[i] : ((const uint32_t *)s->tokens)[i];
}
// domain of the document holding token i (binary search)
int shard_domain_at(const Shard *s, int64_t i);

#endif
