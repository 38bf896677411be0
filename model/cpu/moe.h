// The MoE FFN of the CPU reference: gate (sigmoid or softmax scores, selection by top-K of
// score + bias, optional group-limited routing), capacity, dispatch into per-expert blocks,
// one GEMM per expert, combine, shared experts, balancing losses.
#ifndef MOE_CPU_MOE_H
#define MOE_CPU_MOE_H

#include "../model.h"

typedef struct {
    float loss;  // balancing loss of this layer (0 when the mode has none)
} MoeAux;

// Routing of one token: scores (E) -> chosen experts sel (K) and weights w (K).
// bias (E) or NULL (selection by scores alone). Exposed for tests and for generation.
void moe_route_token(const ModelConfig *c, const float *scores, const float *bias, int *sel, float *w);
// scores (N, E) from logits (N, E) with the config's score function
void moe_scores(const ModelConfig *c, float *scores, const float *logits, int N);

// Forward of the MoE FFN on ba->ln2 (N, C) -> ba->ffn_y (N, C); uses bias (E) for selection
// when the balance mode uses it. stats may be NULL.
void moe_forward(const ModelConfig *c, const LayerParams *lp, BlockActs *ba, const float *bias, int B, int T,
                 MoeAux *aux, RoutingStats *stats);
// Backward: dy (N, C) gradient of ffn_y; accumulates into dln2 (N, C) and the gradients gp.
// aux_scale multiplies the balancing-loss gradient (the loss scale). scratch: cap floats.
void moe_backward(const ModelConfig *c, const LayerParams *lp, LayerParams *gp, BlockActs *ba, const float *dy,
                  float *dln2, int B, int T, float aux_scale, float *scratch, size_t cap);

#endif
