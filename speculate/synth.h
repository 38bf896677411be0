// Synthetic routing traces with a planted rule, for tests and demos.
//
// Per token: layer 0's experts come from the token id (token t uses a fixed random set,
// with the same noise as below); the expert in each slot of layer l+1 is perm_l(expert in
// that slot at layer l), except that with probability p (noise) the slot is replaced by a
// uniformly random expert not already chosen. So, knowing layer l, the best possible
// recall@K one layer ahead is about 1-p, and (1-p)^d at lookahead d. When gate reuse is
// requested, the "next layer's gate" prediction stored for layer l is the true set of layer
// l+1 with each slot replaced by a random expert with probability q.
#ifndef MOE_SYNTH_H
#define MOE_SYNTH_H

#include "trace.h"

typedef struct {
    int E, K, M;        // experts, top-k, MoE layers
    int n_seq, seq_len; // sequences and tokens per sequence
    int vocab;          // token ids 0..vocab-1
    int n_domains;
    float p;            // routing noise per slot per layer
    float q;            // gate-reuse noise per slot (used when reuse)
    int reuse;          // store the gate-reuse field
    uint64_t seed;
} SynthConfig;

// Fills t (allocated here; trace_free it). perm (M-1, E) receives the planted permutations
// when not NULL.
int synth_trace(Trace *t, const SynthConfig *c, int *perm, MoeErr *err);

#endif
