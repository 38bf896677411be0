// Routing traces (.trace): which experts every token chose at every MoE layer of a model.
// Written by the collector (pretrained/), read by the speculator (speculate/).
//
// File layout (all integers little-endian, no padding; fields written one by one):
//
//   header
//     char     magic[8]        "MOETRACE"
//     uint32   version         TRACE_VERSION
//     uint32   header_bytes    size of the whole header including header_crc
//     uint32   E               routed experts per MoE layer (E <= 65535)
//     uint32   K               experts chosen per token (1 <= K <= min(E, TRACE_MAX_K))
//     uint32   n_layers        number of MoE layers M (1..TRACE_MAX_LAYERS)
//     uint32   flags           bit 0: records carry the gate-reuse prediction
//     uint32   n_domains       number of domain names D (1..TRACE_MAX_DOMAINS)
//     uint32   record_bytes    size of one record (checked against the formula below)
//     uint64   n_records       number of token records (finalized when the writer closes)
//     char     model[64]       model name, NUL-padded
//     char     dataset[64]     dataset name, NUL-padded
//     uint32   layer_idx[M]    transformer-block index of each MoE layer, strictly increasing
//     char     domains[D][32]  domain names, NUL-padded
//     uint32   header_crc      CRC-32C of every header byte before this field
//   records, n_records times
//     uint32   seq             sequence id, unique in the file (a sequence's records are
//                              contiguous and in position order)
//     uint32   pos             position in the sequence
//     uint32   token           token id
//     uint16   domain          index into domains (< D)
//     uint16   reserved        0
//     uint16   ids[M][K]       chosen experts per MoE layer, each < E, distinct within a layer
//     float32  weights[M][K]   their gate weights (finite)
//     uint16   reuse[M-1][K]   only with flag bit 0: top-K of the gate of MoE layer m+1 applied to
//                              the hidden state entering MoE layer m (the "gate reuse" prediction
//                              of layer m+1, available one layer ahead), each < E
//   trailer
//     uint32   records_crc     CRC-32C of all record bytes
//
// record_bytes = 16 + M*K*(2+4) + (reuse ? (M-1)*K*2 : 0).
#ifndef MOE_TRACE_H
#define MOE_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"

#define TRACE_MAGIC "MOETRACE"
#define TRACE_VERSION 1u
#define TRACE_MAX_LAYERS 256
#define TRACE_MAX_DOMAINS 256
#define TRACE_MAX_K 64
#define TRACE_NAME_LEN 64
#define TRACE_DOMAIN_LEN 32
#define TRACE_FLAG_REUSE 1u

typedef struct {
    char model[TRACE_NAME_LEN];     // NUL-terminated (at most 63 characters)
    char dataset[TRACE_NAME_LEN];   // NUL-terminated
    int E;                          // routed experts per MoE layer
    int K;                          // experts per token
    int n_layers;                   // MoE layers M
    int layer_idx[TRACE_MAX_LAYERS];  // block index of each MoE layer
    int has_reuse;                  // records carry the gate-reuse prediction
    int n_domains;
    char domains[TRACE_MAX_DOMAINS][TRACE_DOMAIN_LEN];
} TraceHeader;

// Size in bytes of one record for this header.
size_t trace_record_bytes(const TraceHeader *h);
// Checks the header's sizes and names; 0 or -1 with a message naming `what` (a path).
int trace_header_check(const TraceHeader *h, const char *what, MoeErr *err);

// ---------------------------------------------------------------------------------------
// Streaming writer: records go to PATH.tmp as they come; close finalizes the header's
// record count and CRCs, fsyncs and renames to PATH. Abort removes PATH.tmp.

typedef struct TraceWriter TraceWriter;

TraceWriter *trace_writer_open(const char *path, const TraceHeader *h, MoeErr *err);
// ids (M, K), weights (M, K), reuse (M-1, K) or NULL when the header has no reuse field.
int trace_writer_append(TraceWriter *w, uint32_t seq, uint32_t pos, uint32_t token, uint16_t domain,
                        const uint16_t *ids, const float *weights, const uint16_t *reuse, MoeErr *err);
int trace_writer_close(TraceWriter *w, MoeErr *err);  // frees w, also on failure
void trace_writer_abort(TraceWriter *w);              // frees w, removes the temporary file
uint64_t trace_writer_count(const TraceWriter *w);

// ---------------------------------------------------------------------------------------
// Reader: validates everything (magic, version, sizes against the file length, header and
// record CRCs, expert ids < E and distinct, domain < D, finite weights) and decodes into arrays.

typedef struct {
    TraceHeader h;
    size_t n;          // records (tokens)
    uint32_t *seq;     // (n)
    uint32_t *pos;     // (n)
    uint32_t *token;   // (n)
    uint16_t *domain;  // (n)
    uint16_t *ids;     // (n, M, K)
    float *weights;    // (n, M, K)
    uint16_t *reuse;   // (n, M-1, K), NULL without the reuse field
} Trace;

int trace_read(const char *path, Trace *t, MoeErr *err);
void trace_free(Trace *t);

// Fills a Trace in memory (for tests and synthetic data): allocates arrays for n records.
int trace_alloc(Trace *t, const TraceHeader *h, size_t n, MoeErr *err);
// Writes a whole in-memory Trace through the streaming writer.
int trace_write(const char *path, const Trace *t, MoeErr *err);
// Concatenates traces of the same model (same model name, E, K, MoE layers, gate-reuse field):
// domains are merged by name, sequence ids of part j are offset so that they stay unique.
// names[j] names part j in error messages.
int trace_concat(Trace *out, const Trace *parts, int n_parts, const char *const *names, MoeErr *err);

#endif
