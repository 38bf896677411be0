// The learned expert speculator: a small MLP written by hand (forward, backward, AdamW),
// and its file format (.spec).
//
// One sample = (token i, source MoE layer l). Input (summed into x0, width H):
//   tok_emb[hash(token) % n_tok] + pos_emb[bucket(pos)] + layer_emb[l]
//   + sum_k c_k * cur_emb[l, e_k]          experts chosen at layer l, c_k = (w_k/sum(w) + 1/K)/2
//                                          (gate weights mixed with uniform: trains much faster
//                                          than pure gate weights, measured on planted rules)
//   + sum_k c'_k * prev_emb[l-1, e'_k]     experts chosen at layer l-1 (when l > 0)
//   + (1/K) sum_k reuse_emb[l, r_k]        gate-reuse prediction of layer l+1 (optional)
// Trunk: n_hidden residual blocks h <- h + relu(W h + b).
// Heads: for lookahead d = 1..D with l+d < M: logits (E) = Wout[d-1][l+d] h + bout[d-1][l+d].
// Loss, mean over the valid d, target S = the K experts chosen at layer l+d:
//   SPEC_LOSS_BCE_RANK: (1/K) sum_e BCE(sigmoid(z_e), 1[e in S])
//                       + rank_weight * mean over (p in S, n not in S) softplus(z_n - z_p)
//   SPEC_LOSS_LISTWISE: -(1/K) sum_{e in S} log softmax(z)_e
//
// .spec file (little-endian): magic "MOESPEC1", u32 version, u32 header_bytes, char model[64],
// u32 E, K, M, D, H, n_hidden, n_tok, n_pos, use_reuse, loss, f32 rank_weight, u64 split_seed,
// f32 val_frac, f32 test_frac, u64 n_params, u32 layer_idx[M]; f32 params[n_params];
// u32 CRC-32C of everything before it.
#ifndef MOE_SPEC_MLP_H
#define MOE_SPEC_MLP_H

#include <stddef.h>
#include <stdint.h>

#include "trace.h"

#define SPEC_MAGIC "MOESPEC1"
#define SPEC_VERSION 1u
#define SPEC_MAX_D 3

enum { SPEC_LOSS_BCE_RANK = 0, SPEC_LOSS_LISTWISE = 1 };

typedef struct {
    int E, K, M;      // of the traced model
    int D;            // lookaheads 1..D
    int H;            // hidden width
    int n_hidden;     // residual blocks (1 or 2)
    int n_tok;        // token hash buckets
    int n_pos;        // position buckets
    int use_reuse;    // gate-reuse feature
    int loss;         // SPEC_LOSS_*
    float rank_weight;
} SpecConfig;

typedef struct {
    SpecConfig c;
    char model[TRACE_NAME_LEN];  // model the traces came from
    int layer_idx[TRACE_MAX_LAYERS];
    uint64_t split_seed;
    float val_frac, test_frac;
    size_t n_params;
    float *params;
    // offsets into params
    size_t o_tok, o_pos, o_layer, o_cur, o_prev, o_reuse, o_w, o_b, o_out, o_bout;
    // parameter blocks (rows of embeddings, matrices, heads) for sparse gradient bookkeeping
    int n_blocks;
    size_t *blk_off, *blk_len;
    uint8_t *blk_decay;
    int b_tok, b_pos, b_layer, b_cur, b_prev, b_reuse, b_w, b_b, b_out, b_bout;
} SpecModel;

// One sample's inputs. cur/prev/reuse ids and weights have K entries; prev and reuse may be
// NULL. target[d-1] = the K experts at layer l+d, or NULL when l+d >= M (or not wanted).
typedef struct {
    uint32_t token, pos;
    int l;
    const uint16_t *cur;
    const float *cur_w;
    const uint16_t *prev;
    const float *prev_w;
    const uint16_t *reuse;
    const uint16_t *target[SPEC_MAX_D];
} SpecInput;

// Gradient accumulator with touched-block tracking (one per thread).
typedef struct {
    float *g;        // (n_params)
    int *stamp;      // (n_blocks) == step when the block was touched in this step
    int *list;       // touched blocks
    int n_list;
    int step;
} SpecGrad;

// Scratch for one forward/backward (one per thread).
typedef struct {
    float *x0, *h, *pre, *dh, *dz, *z, *tmp;
} SpecScratch;

int spec_init(SpecModel *m, const SpecConfig *c, const TraceHeader *th, uint64_t seed, MoeErr *err);
void spec_free(SpecModel *m);
void spec_scratch_init(SpecScratch *s, const SpecConfig *c);
void spec_scratch_free(SpecScratch *s);
void spec_grad_init(SpecGrad *g, const SpecModel *m);
void spec_grad_free(SpecGrad *g);

// Builds the input of sample (record i, source layer l) from a trace.
void spec_input_from_trace(const Trace *t, size_t i, int l, int D, int use_reuse, SpecInput *in);
// logits (D, E) for every d with l+d < M (others untouched). Returns the number of valid d.
int spec_forward(const SpecModel *m, const SpecInput *in, float *logits, SpecScratch *s);
// Loss of one sample (mean over valid targets); when g != NULL accumulates d loss/d params
// (times `scale`) into g. Returns the loss, or 0 when no target is valid.
double spec_loss_backward(const SpecModel *m, const SpecInput *in, SpecScratch *s, SpecGrad *g, float scale);

// AdamW state and a step over the blocks touched in g (gradients already summed into g).
typedef struct {
    float *m, *v;
    long t;
    float lr, beta1, beta2, eps, wd;
} SpecAdam;
void spec_adam_init(SpecAdam *a, const SpecModel *m, float lr, float wd);
void spec_adam_free(SpecAdam *a);
void spec_adam_step(SpecAdam *a, SpecModel *m, SpecGrad *g);  // also zeroes g's touched blocks
// One block's update (a->t already advanced; bc1, bc2 = bias corrections); zeroes grad.
void spec_adam_block(const SpecAdam *a, SpecModel *m, int blk, float *grad, float bc1, float bc2);

int spec_save(const SpecModel *m, const char *path, MoeErr *err);
int spec_load(SpecModel *m, const char *path, MoeErr *err);
// Refuses (with a message naming the file) a speculator trained for another model.
int spec_check_compat(const SpecModel *m, const TraceHeader *h, const char *path, MoeErr *err);

#endif
