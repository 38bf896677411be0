// The whole model on the GPU, step by step the same computation as model/cpu/model.c (read
// side by side), built from the kernels of cuda_ops.h. See cuda_model.h.
extern "C" {
#include "../model.h"  // C declarations first: config.h must get C linkage
}

#include "cuda_common.cuh"
#include "cuda_model.h"
#include "cuda_ops.h"

#include <math.h>
#include <string.h>

struct CudaModel {
    ModelConfig cfg;
    int n_blocks, B_max, T_max;
    size_t num_params;
    float *params, *grads, *m, *v;  // device, num_params each
    ParamPtrs p, g;                 // device pointers into params / grads
    LayerParams lp[2][64];
    TensorInfo *tensors;            // host
    int n_tensors;
    float *bias;                    // (n_blocks, E) device
    BlockActs acts[64];             // device; att holds lse (B, H, T)
    float *x_final, *lnf, *lnf_rstd, *logits, *lse;
    int *inputs, *targets, *pos;
    // backward buffers
    float *dx, *dlnf, *dln2, *datto, *dqf, *dkf, *dvf, *dkv, *dkva, *dckvn, *dln1, *dqan, *dqa, *att_scr;
    float *dg, *dh1, *dh3;                                        // dense
    float *dsg, *dsh1, *dsh3, *dey, *dxe, *deg, *deh1, *deh3, *dwts, *dlogits;  // MoE
    float *ce_scr, *loss_dev, *norm_dev, *norm_scr;
    int *n_valid_dev;
    // routing statistics per MoE block: loads (n_moe, E) and dropped (n_moe)
    int n_moe, moe_block[64];
    float *load, *dropped;
    float *stats;      // (n_moe, 2): entropy sum, top-1 weight sum
    float *stats_scr;  // 2N
    float *seg_scr;    // B_max + 1
    // MTP (depth 1)
    float *mtp_emb, *mtp_en, *mtp_en_rstd, *mtp_hn, *mtp_hn_rstd, *mtp_cat, *mtp_x_out, *mtp_ln, *mtp_ln_rstd;
    float *mtp_logits, *mtp_lse, *dmx, *dmln, *dcat, *den, *dhn, *demb;
    int *mtp_targets, *mtp_emb_tok;
    float grad_scale;  // loss scale of backward (1 unless fp16 loss scaling)
    // bf16 GEMMs (cuda_model_set_bf16): bf16 working copy of the weights, bf16 copies of GEMM inputs
    int bf16;
    uint16_t *params16, *act16a, *act16b;
    size_t act16_floats;
    int *flag_dev;     // non-finite gradient flag
    // last forward
    float ce_loss, aux_loss, mtp_loss;
    // last forward
    int B, T, n_valid;
    float loss;
};

static int block_is_moe(const ModelConfig *c, int l) {
    if (l < c->n_layers) return cfg_is_moe_layer(c, l);
    return c->n_layers > c->n_dense_layers;
}

static float *dalloc(size_t n) {
    float *p = (float *)cu_malloc(sizeof(float) * (n ? n : 1));
    cu_zero(p, sizeof(float) * (n ? n : 1));
    return p;
}
static int *ialloc(size_t n) {
    int *p = (int *)cu_malloc(sizeof(int) * (n ? n : 1));
    cu_zero(p, sizeof(int) * (n ? n : 1));
    return p;
}

// ---- small kernels of the attention block ------------------------------------------------

// kf (N, H, dqk) = per head [k_nope_h, k_pe]; vf (N, H, dv) = v_h; from kv (N, H*(nope+dv)) and
// kva (N, kvr+rope) whose last rope values are the shared k_pe
__global__ void assemble_kv_kernel(float *kf, float *vf, const float *kv, const float *kva, int N, int H, int nope,
                                   int rope, int dv, int kvr) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int dqk = nope + rope, w = dqk + dv;
    if (i >= (long)N * H * w) return;
    int j = (int)(i % w);
    long nh = i / w;
    int h = (int)(nh % H);
    long n = nh / H;
    const float *kvn = kv + n * H * (nope + dv) + (long)h * (nope + dv);
    if (j < nope) kf[nh * dqk + j] = kvn[j];
    else if (j < dqk) kf[nh * dqk + j] = kva[n * (kvr + rope) + kvr + (j - nope)];
    else vf[nh * dv + (j - dqk)] = kvn[nope + (j - dqk)];
}

// backward of assemble_kv: dkv (N, H*(nope+dv)) = [dk_nope_h, dv_h] (overwrites), and
// dkva[:, kvr:] (N, rope) = sum over heads of dk_pe (overwrites; one thread per (n, i))
__global__ void assemble_kv_backward_kernel(float *dkv, float *dkva, const float *dkf, const float *dvf, int N, int H,
                                            int nope, int rope, int dv, int kvr) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int dqk = nope + rope, w = nope + dv;
    long n_split = (long)N * H * w;
    if (i < n_split) {
        int j = (int)(i % w);
        long nh = i / w;
        dkv[i] = j < nope ? dkf[nh * dqk + j] : dvf[nh * dv + (j - nope)];
    } else if (i < n_split + (long)N * rope) {
        long r = i - n_split;
        int j = (int)(r % rope);
        long n = r / rope;
        float s = 0.0f;
        for (int h = 0; h < H; h++) s += dkf[(n * H + h) * dqk + nope + j];
        dkva[n * (kvr + rope) + kvr + j] += s;
    }
}

// dst[n, dst_off + j] = src[n, src_off + j] for j < W (strided row blocks)
__global__ void copy_cols_kernel(float *dst, int dst_stride, int dst_off, const float *src, int src_stride, int src_off,
                                 int N, int W) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * W) return;
    long n = i / W;
    int j = (int)(i % W);
    dst[n * dst_stride + dst_off + j] = src[n * src_stride + src_off + j];
}
static void copy_cols(float *dst, int dst_stride, int dst_off, const float *src, int src_stride, int src_off, int N,
                      int W) {
    LAUNCH(copy_cols_kernel, ceil_div((long)N * W, 256), 256, 0, 0, dst, dst_stride, dst_off, src, src_stride, src_off,
           N, W);
}

// rows n with mask[n] < 0 set to zero
__global__ void zero_masked_rows_kernel(float *x, const int *mask, int N, int C) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long)N * C && mask[i / C] < 0) x[i] = 0.0f;
}

// ---- create / free ------------------------------------------------------------------------

static void carve_block(BlockActs *ba, const ModelConfig *c, int is_moe, int B, int T) {
    size_t N = (size_t)B * T;
    int C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim;
    memset(ba, 0, sizeof(*ba));
    ba->x_in = dalloc(N * C);
    ba->ln1 = dalloc(N * C);
    ba->ln1_rstd = dalloc(N);
    if (c->q_lora_rank > 0) {
        ba->qa = dalloc(N * c->q_lora_rank);
        ba->qan = dalloc(N * c->q_lora_rank);
        ba->qa_rstd = dalloc(N);
    }
    ba->q = dalloc(N * H * dqk);
    ba->kva = dalloc(N * (c->kv_lora_rank + c->qk_rope_dim));
    ba->ckvn = dalloc(N * c->kv_lora_rank);
    ba->ckv_rstd = dalloc(N);
    ba->kv = dalloc(N * H * (c->qk_nope_dim + dv));
    ba->qf = dalloc(N * H * dqk);
    ba->kf = dalloc(N * H * dqk);
    ba->vf = dalloc(N * H * dv);
    ba->att = dalloc((size_t)B * H * T);  // lse of the flash attention
    ba->atto = dalloc(N * H * dv);
    ba->x_mid = dalloc(N * C);
    ba->ln2 = dalloc(N * C);
    ba->ln2_rstd = dalloc(N);
    ba->ffn_y = dalloc(N * C);
    if (!is_moe) {
        ba->h1 = dalloc(N * c->inter_dim);
        ba->h3 = dalloc(N * c->inter_dim);
        ba->g = dalloc(N * c->inter_dim);
    } else {
        int E = c->n_routed_experts, K = c->top_k, I = c->moe_inter_dim, S = c->n_shared_experts;
        ba->logits = dalloc(N * E);
        ba->scores = dalloc(N * E);
        ba->sel = ialloc(N * K);
        ba->wts = dalloc(N * K);
        ba->row_of = ialloc(N * K);
        ba->perm = ialloc(N * K);
        ba->expert_off = ialloc(E + 1);
        ba->xe = dalloc(N * K * C);
        ba->eh1 = dalloc(N * K * I);
        ba->eh3 = dalloc(N * K * I);
        ba->eg = dalloc(N * K * I);
        ba->ey = dalloc(N * K * C);
        ba->aux_f = dalloc((size_t)(B + 1) * E);
        if (S > 0) {
            ba->sh1 = dalloc(N * S * I);
            ba->sh3 = dalloc(N * S * I);
            ba->sg = dalloc(N * S * I);
        }
    }
}

static void free_block(BlockActs *ba) {
    void *ptrs[] = {ba->x_in, ba->ln1, ba->ln1_rstd, ba->qa, ba->qan, ba->qa_rstd, ba->q, ba->kva, ba->ckvn,
                    ba->ckv_rstd, ba->kv, ba->qf, ba->kf, ba->vf, ba->att, ba->atto, ba->x_mid, ba->ln2, ba->ln2_rstd,
                    ba->ffn_y, ba->h1, ba->h3, ba->g, ba->logits, ba->scores, ba->sel, ba->wts, ba->row_of, ba->perm,
                    ba->expert_off, ba->xe, ba->eh1, ba->eh3, ba->eg, ba->ey, ba->sh1, ba->sh3, ba->sg, ba->aux_f};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) cu_free(ptrs[i]);
}

extern "C" {

int cuda_model_create(CudaModel **out, const ModelConfig *cfg, int B_max, int T_max, MoeErr *err) {
    *out = NULL;
    if (config_validate(cfg, err) != 0) return -1;
    if (cfg->n_layers + cfg->mtp_depth > 63) return moe_err_set(err, "config: n_layers too large (max 63)");
    if (B_max <= 0 || T_max <= 0 || T_max > cfg->max_seq_len)
        return moe_err_set(err, "cuda model: batch %d x %d is invalid (max_seq_len %d)", B_max, T_max, cfg->max_seq_len);
    if (cfg->mtp_depth > 1) return moe_err_set(err, "cuda model: mtp_depth must be 0 or 1");
    if (cfg->n_routed_experts > 256 || cfg->top_k > 16 || cfg->n_expert_groups > 64)
        return moe_err_set(err, "cuda model: at most 256 routed experts, top_k 16, 64 expert groups");
    if (cfg_qk_head_dim(cfg) > 256 || cfg->v_head_dim > 256)
        return moe_err_set(err, "cuda model: head sizes above 256 are not supported");
    CudaModel *m = (CudaModel *)calloc(1, sizeof(CudaModel));
    if (!m) return moe_err_set(err, "out of memory");
    const ModelConfig *c = cfg;
    m->cfg = *cfg;
    m->n_blocks = c->n_layers + c->mtp_depth;
    m->B_max = B_max;
    m->T_max = T_max;
    m->num_params = model_layout(c, NULL, &m->n_tensors);
    m->tensors = (TensorInfo *)calloc((size_t)m->n_tensors, sizeof(TensorInfo));
    model_layout(c, m->tensors, &m->n_tensors);
    m->params = dalloc(m->num_params);
    m->grads = dalloc(m->num_params);
    m->m = dalloc(m->num_params);
    m->v = dalloc(m->num_params);
    model_point(c, m->params, &m->p, m->lp[0]);
    model_point(c, m->grads, &m->g, m->lp[1]);
    int E = c->n_routed_experts > 0 ? c->n_routed_experts : 1;
    m->bias = dalloc((size_t)m->n_blocks * E);
    size_t N = (size_t)B_max * T_max;
    int C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim, V = c->vocab_size;
    int kvr = c->kv_lora_rank, rope = c->qk_rope_dim, nope = c->qk_nope_dim, qr = c->q_lora_rank;
    for (int l = 0; l < m->n_blocks; l++) {
        carve_block(&m->acts[l], c, block_is_moe(c, l), B_max, T_max);
        if (block_is_moe(c, l)) m->moe_block[m->n_moe++] = l;
    }
    m->x_final = dalloc(N * C);
    m->lnf = dalloc(N * C);
    m->lnf_rstd = dalloc(N);
    m->logits = dalloc(N * V);
    m->lse = dalloc(N);
    m->inputs = ialloc(N);
    m->targets = ialloc(N);
    m->pos = ialloc(N);
    m->dx = dalloc(N * C);
    m->dlnf = dalloc(N * C);
    m->dln2 = dalloc(N * C);
    m->datto = dalloc(N * H * dv);
    m->dqf = dalloc(N * H * dqk);
    m->dkf = dalloc(N * H * dqk);
    m->dvf = dalloc(N * H * dv);
    m->dkv = dalloc(N * H * (nope + dv));
    m->dkva = dalloc(N * (kvr + rope));
    m->dckvn = dalloc(N * kvr);
    m->dln1 = dalloc(N * C);
    m->dqan = dalloc(N * (qr > 0 ? qr : 1));
    m->dqa = dalloc(N * (qr > 0 ? qr : 1));
    m->att_scr = dalloc((size_t)B_max * H * T_max);
    m->dg = dalloc(N * (c->inter_dim > 0 ? c->inter_dim : 1));
    m->dh1 = dalloc(N * (c->inter_dim > 0 ? c->inter_dim : 1));
    m->dh3 = dalloc(N * (c->inter_dim > 0 ? c->inter_dim : 1));
    if (m->n_moe > 0) {
        int K = c->top_k, I = c->moe_inter_dim, SI = c->n_shared_experts * I;
        m->dsg = dalloc(N * (SI > 0 ? SI : 1));
        m->dsh1 = dalloc(N * (SI > 0 ? SI : 1));
        m->dsh3 = dalloc(N * (SI > 0 ? SI : 1));
        m->dey = dalloc(N * K * C);
        m->dxe = dalloc(N * K * C);
        m->deg = dalloc(N * K * I);
        m->deh1 = dalloc(N * K * I);
        m->deh3 = dalloc(N * K * I);
        m->dwts = dalloc(N * K);
        m->dlogits = dalloc(N * E);
    }
    m->ce_scr = dalloc(N);
    m->loss_dev = dalloc(4);  // [0] unused, [1] cross-entropy, [2] balancing losses
    m->norm_dev = dalloc(1);
    m->norm_scr = dalloc(1024);
    m->n_valid_dev = ialloc(2);  // main, MTP
    m->flag_dev = ialloc(1);
    m->grad_scale = 1.0f;
    m->load = dalloc((size_t)(m->n_moe > 0 ? m->n_moe : 1) * E);
    m->dropped = dalloc(m->n_moe > 0 ? m->n_moe : 1);
    if (c->mtp_depth > 0) {
        m->mtp_emb = dalloc(N * C), m->mtp_en = dalloc(N * C), m->mtp_en_rstd = dalloc(N);
        m->mtp_hn = dalloc(N * C), m->mtp_hn_rstd = dalloc(N), m->mtp_cat = dalloc(N * 2 * C);
        m->mtp_x_out = dalloc(N * C), m->mtp_ln = dalloc(N * C), m->mtp_ln_rstd = dalloc(N);
        m->mtp_logits = dalloc(N * V), m->mtp_lse = dalloc(N);
        m->mtp_targets = ialloc(N), m->mtp_emb_tok = ialloc(N);
        m->dmx = dalloc(N * C), m->dmln = dalloc(N * C), m->dcat = dalloc(N * 2 * C);
        m->den = dalloc(N * C), m->dhn = dalloc(N * C), m->demb = dalloc(N * C);
    }
    m->stats = dalloc(2 * (size_t)(m->n_moe > 0 ? m->n_moe : 1));
    m->stats_scr = dalloc(2 * N);
    m->seg_scr = dalloc((size_t)B_max + 1);
    *out = m;
    return 0;
}

void cuda_model_free(CudaModel *m) {
    if (!m) return;
    for (int l = 0; l < m->n_blocks; l++) free_block(&m->acts[l]);
    void *ptrs[] = {m->params, m->grads, m->m, m->v, m->bias, m->x_final, m->lnf, m->lnf_rstd, m->logits, m->lse,
                    m->inputs, m->targets, m->pos, m->dx, m->dlnf, m->dln2, m->datto, m->dqf, m->dkf, m->dvf, m->dkv,
                    m->dkva, m->dckvn, m->dln1, m->dqan, m->dqa, m->att_scr, m->dg, m->dh1, m->dh3, m->dsg, m->dsh1,
                    m->dsh3, m->dey, m->dxe, m->deg, m->deh1, m->deh3, m->dwts, m->dlogits, m->ce_scr, m->loss_dev,
                    m->norm_dev, m->norm_scr, m->n_valid_dev, m->load, m->dropped, m->stats, m->stats_scr,
                    m->seg_scr, m->mtp_emb, m->mtp_en, m->mtp_en_rstd, m->mtp_hn, m->mtp_hn_rstd, m->mtp_cat,
                    m->mtp_x_out, m->mtp_ln, m->mtp_ln_rstd, m->mtp_logits, m->mtp_lse, m->mtp_targets,
                    m->mtp_emb_tok, m->dmx, m->dmln, m->dcat, m->den, m->dhn, m->demb, m->flag_dev};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) cu_free(ptrs[i]);
    cuda_model_set_bf16(m, 0);
    free(m->tensors);
    free(m);
}

size_t cuda_model_num_params(const CudaModel *m) { return m->num_params; }
void cuda_model_upload_params(CudaModel *m, const float *params) {
    cu_upload(m->params, params, sizeof(float) * m->num_params);
    if (m->bf16) cu_f32_to_bf16(m->params16, m->params, (long)m->num_params);
}

int cuda_model_set_bf16(CudaModel *m, int on) {
    if (on && !cu_supports_bf16()) return -1;
    if (on && !m->bf16) {
        const ModelConfig *c = &m->cfg;
        int H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim, C = c->dim;
        int dims[] = {2 * C, H * dqk, H * dv, c->q_lora_rank, c->kv_lora_rank + c->qk_rope_dim,
                      H * (c->qk_nope_dim + dv), c->inter_dim, c->n_shared_experts * c->moe_inter_dim,
                      c->n_routed_experts};
        int mx = C;
        for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) mx = dims[i] > mx ? dims[i] : mx;
        m->act16_floats = (size_t)m->B_max * m->T_max * mx;
        m->params16 = (uint16_t *)cu_malloc(sizeof(uint16_t) * m->num_params);
        m->act16a = (uint16_t *)cu_malloc(sizeof(uint16_t) * m->act16_floats);
        m->act16b = (uint16_t *)cu_malloc(sizeof(uint16_t) * m->act16_floats);
        cu_f32_to_bf16(m->params16, m->params, (long)m->num_params);
    } else if (!on && m->bf16) {
        cu_free(m->params16), cu_free(m->act16a), cu_free(m->act16b);
        m->params16 = m->act16a = m->act16b = NULL;
    }
    m->bf16 = on;
    return 0;
}

void cuda_model_download_params16(const CudaModel *m, uint16_t *p16) {
    if (m->bf16) cu_download(p16, m->params16, sizeof(uint16_t) * m->num_params);
}
void cuda_model_download_params(const CudaModel *m, float *params) {
    cu_download(params, m->params, sizeof(float) * m->num_params);
}
void cuda_model_upload_grads(CudaModel *m, const float *grads) {
    cu_upload(m->grads, grads, sizeof(float) * m->num_params);
}
void cuda_model_download_grads(const CudaModel *m, float *grads) {
    cu_download(grads, m->grads, sizeof(float) * m->num_params);
}
void cuda_model_upload_adam(CudaModel *m, const float *mm, const float *vv) {
    cu_upload(m->m, mm, sizeof(float) * m->num_params);
    cu_upload(m->v, vv, sizeof(float) * m->num_params);
}
void cuda_model_download_adam(const CudaModel *m, float *mm, float *vv) {
    cu_download(mm, m->m, sizeof(float) * m->num_params);
    cu_download(vv, m->v, sizeof(float) * m->num_params);
}
static size_t bias_floats(const CudaModel *m) {
    return (size_t)m->n_blocks * (m->cfg.n_routed_experts > 0 ? m->cfg.n_routed_experts : 1);
}
void cuda_model_upload_bias(CudaModel *m, const float *bias) { cu_upload(m->bias, bias, sizeof(float) * bias_floats(m)); }
void cuda_model_download_bias(const CudaModel *m, float *bias) {
    cu_download(bias, m->bias, sizeof(float) * bias_floats(m));
}

}  // extern "C"

// ---- matmuls: fp32 (cuBLAS SGEMM), or bf16 inputs with fp32 accumulation and output ------

static const uint16_t *w16(const CudaModel *m, const float *w) { return m->params16 + (w - m->params); }

static void check_act16(const CudaModel *m, size_t n) {
    if (n > m->act16_floats) {
        fprintf(stderr, "error: internal: bf16 GEMM scratch too small (%zu > %zu)\n", n, m->act16_floats);
        exit(EXIT_FAILURE);
    }
}

// out (N, OC) = inp (N, IC) @ w (OC, IC)^T
static void mm_fwd(CudaModel *m, float *out, const float *inp, const float *w, int N, int IC, int OC) {
    if (!m->bf16) {
        cu_matmul_forward(out, inp, w, N, IC, OC);
        return;
    }
    check_act16(m, (size_t)N * IC);
    cu_f32_to_bf16(m->act16a, inp, (long)N * IC);
    cu_gemm_bf16_f32(0, 1, N, OC, IC, 1.0f, m->act16a, IC, w16(m, w), IC, 0.0f, out, OC);
}

// dinp += dout @ w; dw += dout^T @ inp
static void mm_bwd(CudaModel *m, float *dinp, float *dw, const float *dout, const float *inp, const float *w, int N,
                   int IC, int OC) {
    if (!m->bf16) {
        cu_matmul_backward(dinp, dw, dout, inp, w, N, IC, OC);
        return;
    }
    check_act16(m, (size_t)N * (OC > IC ? OC : IC));
    cu_f32_to_bf16(m->act16a, dout, (long)N * OC);
    if (dinp) cu_gemm_bf16_f32(0, 0, N, IC, OC, 1.0f, m->act16a, OC, w16(m, w), IC, 1.0f, dinp, IC);
    if (dw) {
        cu_f32_to_bf16(m->act16b, inp, (long)N * IC);
        cu_gemm_bf16_f32(1, 0, OC, IC, N, 1.0f, m->act16a, OC, m->act16b, IC, 1.0f, dw, IC);
    }
}

// ---- forward --------------------------------------------------------------------------------

// ln1_done: ln1 and ln1_rstd were computed by the previous block's fused residual + norm.
// Ends with x_mid = x_in + attention and ln2 = rmsnorm(x_mid) in one fused kernel.
static void attention_block_forward(CudaModel *m, const LayerParams *lp, BlockActs *ba, int B, int T, int ln1_done) {
    const ModelConfig *c = &m->cfg;
    int N = B * T, C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim;
    int nope = c->qk_nope_dim, rope = c->qk_rope_dim, kvr = c->kv_lora_rank;
    if (!ln1_done) cu_rmsnorm_forward(ba->ln1, ba->ln1_rstd, ba->x_in, C, lp->attn_norm, N, C, c->norm_eps);
    if (c->q_lora_rank > 0) {
        int qr = c->q_lora_rank;
        mm_fwd(m, ba->qa, ba->ln1, lp->wq_a, N, C, qr);
        cu_rmsnorm_forward(ba->qan, ba->qa_rstd, ba->qa, qr, lp->q_norm, N, qr, c->norm_eps);
        mm_fwd(m, ba->q, ba->qan, lp->wq_b, N, qr, H * dqk);
    } else {
        mm_fwd(m, ba->q, ba->ln1, lp->wq, N, C, H * dqk);
    }
    mm_fwd(m, ba->kva, ba->ln1, lp->wkv_a, N, C, kvr + rope);
    cu_rmsnorm_forward(ba->ckvn, ba->ckv_rstd, ba->kva, kvr + rope, lp->kv_norm, N, kvr, c->norm_eps);
    mm_fwd(m, ba->kv, ba->ckvn, lp->wkv_b, N, kvr, H * (nope + dv));
    cudaCheck(cudaMemcpyAsync(ba->qf, ba->q, sizeof(float) * (size_t)N * H * dqk, cudaMemcpyDeviceToDevice, 0));
    cu_rope_apply(ba->qf + nope, N, H, H * dqk, dqk, rope, m->pos, c->rope_theta, 0);
    long total = (long)N * H * (dqk + dv);
    LAUNCH(assemble_kv_kernel, ceil_div(total, 256), 256, 0, 0, ba->kf, ba->vf, ba->kv, ba->kva, N, H, nope, rope, dv,
           kvr);
    cu_rope_apply(ba->kf + nope, N, H, H * dqk, dqk, rope, m->pos, c->rope_theta, 0);
    float scale = 1.0f / sqrtf((float)dqk);
    cu_attention_forward(ba->atto, ba->att, ba->qf, ba->kf, ba->vf, B, T, H, dqk, dv, scale);
    mm_fwd(m, ba->x_mid, ba->atto, lp->wo, N, H * dv, C);
    cu_residual_rmsnorm_forward(ba->x_mid, ba->ln2, ba->ln2_rstd, ba->x_mid, ba->x_in, lp->ffn_norm, N, C,
                                c->norm_eps);
}

static int moe_index(const CudaModel *m, int l) {
    for (int i = 0; i < m->n_moe; i++)
        if (m->moe_block[i] == l) return i;
    return -1;
}

static void moe_forward(CudaModel *m, int l, const LayerParams *lp, BlockActs *ba, int B, int T) {
    const ModelConfig *c = &m->cfg;
    int N = B * T, C = c->dim, E = c->n_routed_experts, K = c->top_k, I = c->moe_inter_dim;
    int SI = c->n_shared_experts * I, mi = moe_index(m, l);
    const float *sel_bias = cfg_uses_bias(c) ? m->bias + (size_t)l * E : NULL;
    cu_matmul_forward(ba->logits, ba->ln2, lp->gate, N, C, E);  // the router stays fp32
    cu_moe_scores(ba->scores, ba->logits, N, E, c->score_func);
    cu_moe_route(ba->sel, ba->wts, ba->scores, sel_bias, N, E, K, c->n_expert_groups, c->n_limited_groups,
                 c->score_func, c->route_scale);
    long cap = c->capacity_factor > 0.0f ? (long)ceil((double)c->capacity_factor * N * K / E) : (long)N * K;
    cu_moe_dispatch(ba->row_of, ba->perm, ba->expert_off, m->load + (size_t)mi * E, m->dropped + mi, ba->sel, N, K, E,
                    cap);
    cu_moe_routing_stats(m->stats + 2 * mi, m->stats + 2 * mi + 1, m->stats_scr, ba->scores, ba->wts, N, E, K);
    int seq = c->balance == BALANCE_SEQAUX || c->balance == BALANCE_BIAS_SEQAUX, batch = c->balance == BALANCE_AUX;
    if ((seq || batch) && c->aux_alpha > 0.0f)
        cu_moe_aux_forward(ba->aux_f, m->loss_dev + 2, m->seg_scr, ba->scores, ba->sel, seq ? B : 1, seq ? T : N, E, K,
                           c->aux_alpha);
    cu_moe_gather(ba->xe, ba->ln2, ba->perm, ba->expert_off, N, K, C, E);
    cu_grouped_matmul_forward(ba->eh1, ba->xe, lp->ew1, ba->expert_off, E, N, C, I);
    cu_grouped_matmul_forward(ba->eh3, ba->xe, lp->ew3, ba->expert_off, E, N, C, I);
    cu_swiglu_forward(ba->eg, ba->eh1, ba->eh3, (long)N * K * I);
    cu_grouped_matmul_forward(ba->ey, ba->eg, lp->ew2, ba->expert_off, E, N, I, C);
    if (SI > 0) {
        mm_fwd(m, ba->sh1, ba->ln2, lp->sw1, N, C, SI);
        mm_fwd(m, ba->sh3, ba->ln2, lp->sw3, N, C, SI);
        cu_swiglu_forward(ba->sg, ba->sh1, ba->sh3, (long)N * SI);
        mm_fwd(m, ba->ffn_y, ba->sg, lp->sw2, N, SI, C);
    } else {
        cu_zero(ba->ffn_y, sizeof(float) * (size_t)N * C);
    }
    cu_moe_combine(ba->ffn_y, ba->ey, ba->wts, ba->row_of, N, K, C);
}

// x_out = x_mid + ffn_y fused with the norm that reads it next (next_w: its weight, into
// next_ln / next_rstd; NULL: a plain add)
static void block_forward(CudaModel *m, int l, float *x_out, int B, int T, int ln1_done, const float *next_w,
                          float *next_ln, float *next_rstd) {
    const ModelConfig *c = &m->cfg;
    const LayerParams *lp = &m->p.layers[l];
    BlockActs *ba = &m->acts[l];
    int N = B * T, C = c->dim;
    attention_block_forward(m, lp, ba, B, T, ln1_done);
    if (lp->is_moe) {
        moe_forward(m, l, lp, ba, B, T);
    } else {
        int I = c->inter_dim;
        mm_fwd(m, ba->h1, ba->ln2, lp->w1, N, C, I);
        mm_fwd(m, ba->h3, ba->ln2, lp->w3, N, C, I);
        cu_swiglu_forward(ba->g, ba->h1, ba->h3, (long)N * I);
        mm_fwd(m, ba->ffn_y, ba->g, lp->w2, N, I, C);
    }
    if (next_w)
        cu_residual_rmsnorm_forward(x_out, next_ln, next_rstd, ba->x_mid, ba->ffn_y, next_w, N, C, c->norm_eps);
    else
        cu_add(x_out, ba->x_mid, ba->ffn_y, (long)N * C);
}

// ---- backward -------------------------------------------------------------------------------

static void attention_block_backward(CudaModel *m, int l, float *dx) {
    const ModelConfig *c = &m->cfg;
    const LayerParams *lp = &m->p.layers[l];
    LayerParams *gp = &m->g.layers[l];
    BlockActs *ba = &m->acts[l];
    int B = m->B, T = m->T, N = B * T, C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim;
    int nope = c->qk_nope_dim, rope = c->qk_rope_dim, kvr = c->kv_lora_rank;
    cu_zero(m->datto, sizeof(float) * (size_t)N * H * dv);
    mm_bwd(m, m->datto, gp->wo, dx, ba->atto, lp->wo, N, H * dv, C);
    cu_zero(m->dqf, sizeof(float) * (size_t)N * H * dqk);
    cu_zero(m->dkf, sizeof(float) * (size_t)N * H * dqk);
    cu_zero(m->dvf, sizeof(float) * (size_t)N * H * dv);
    float scale = 1.0f / sqrtf((float)dqk);
    // the forward output of the attention is atto (its row sums with dout are the softmax terms)
    cu_attention_backward(m->dqf, m->dkf, m->dvf, m->att_scr, m->datto, ba->atto, ba->att, ba->qf, ba->kf, ba->vf, B,
                          T, H, dqk, dv, scale);
    cu_rope_apply(m->dqf + nope, N, H, H * dqk, dqk, rope, m->pos, c->rope_theta, 1);
    cu_rope_apply(m->dkf + nope, N, H, H * dqk, dqk, rope, m->pos, c->rope_theta, 1);
    cu_zero(m->dkva, sizeof(float) * (size_t)N * (kvr + rope));
    long total = (long)N * H * (nope + dv) + (long)N * rope;
    LAUNCH(assemble_kv_backward_kernel, ceil_div(total, 256), 256, 0, 0, m->dkv, m->dkva, m->dkf, m->dvf, N, H, nope,
           rope, dv, kvr);
    cu_zero(m->dckvn, sizeof(float) * (size_t)N * kvr);
    mm_bwd(m, m->dckvn, gp->wkv_b, m->dkv, ba->ckvn, lp->wkv_b, N, kvr, H * (nope + dv));
    cu_rmsnorm_backward(m->dkva, kvr + rope, gp->kv_norm, m->dckvn, ba->kva, kvr + rope, lp->kv_norm, ba->ckv_rstd, N,
                        kvr);
    cu_zero(m->dln1, sizeof(float) * (size_t)N * C);
    mm_bwd(m, m->dln1, gp->wkv_a, m->dkva, ba->ln1, lp->wkv_a, N, C, kvr + rope);
    if (c->q_lora_rank > 0) {
        int qr = c->q_lora_rank;
        cu_zero(m->dqan, sizeof(float) * (size_t)N * qr);
        cu_zero(m->dqa, sizeof(float) * (size_t)N * qr);
        mm_bwd(m, m->dqan, gp->wq_b, m->dqf, ba->qan, lp->wq_b, N, qr, H * dqk);
        cu_rmsnorm_backward(m->dqa, qr, gp->q_norm, m->dqan, ba->qa, qr, lp->q_norm, ba->qa_rstd, N, qr);
        mm_bwd(m, m->dln1, gp->wq_a, m->dqa, ba->ln1, lp->wq_a, N, C, qr);
    } else {
        mm_bwd(m, m->dln1, gp->wq, m->dqf, ba->ln1, lp->wq, N, C, H * dqk);
    }
    cu_rmsnorm_backward(dx, C, gp->attn_norm, m->dln1, ba->x_in, C, lp->attn_norm, ba->ln1_rstd, N, C);
}

static void moe_backward(CudaModel *m, const LayerParams *lp, LayerParams *gp, BlockActs *ba, const float *dy,
                         float *dln2) {
    const ModelConfig *c = &m->cfg;
    int N = m->B * m->T, C = c->dim, E = c->n_routed_experts, K = c->top_k, I = c->moe_inter_dim;
    int SI = c->n_shared_experts * I, NK = N * K;
    if (SI > 0) {
        cu_zero(m->dsg, sizeof(float) * (size_t)N * SI);
        cu_zero(m->dsh1, sizeof(float) * (size_t)N * SI);
        cu_zero(m->dsh3, sizeof(float) * (size_t)N * SI);
        mm_bwd(m, m->dsg, gp->sw2, dy, ba->sg, lp->sw2, N, SI, C);
        cu_swiglu_backward(m->dsh1, m->dsh3, m->dsg, ba->sh1, ba->sh3, (long)N * SI);
        mm_bwd(m, dln2, gp->sw1, m->dsh1, ba->ln2, lp->sw1, N, C, SI);
        mm_bwd(m, dln2, gp->sw3, m->dsh3, ba->ln2, lp->sw3, N, C, SI);
    }
    cu_moe_combine_backward(m->dey, m->dwts, dy, ba->ey, ba->wts, ba->perm, ba->row_of, ba->expert_off, N, K, C, E);
    cu_zero(m->deg, sizeof(float) * (size_t)NK * I);
    cu_zero(m->deh1, sizeof(float) * (size_t)NK * I);
    cu_zero(m->deh3, sizeof(float) * (size_t)NK * I);
    cu_zero(m->dxe, sizeof(float) * (size_t)NK * C);
    cu_grouped_matmul_backward(m->deg, gp->ew2, m->dey, ba->eg, lp->ew2, ba->expert_off, E, N, I, C);
    cu_swiglu_backward(m->deh1, m->deh3, m->deg, ba->eh1, ba->eh3, (long)NK * I);
    cu_grouped_matmul_backward(m->dxe, gp->ew1, m->deh1, ba->xe, lp->ew1, ba->expert_off, E, N, C, I);
    cu_grouped_matmul_backward(m->dxe, gp->ew3, m->deh3, ba->xe, lp->ew3, ba->expert_off, E, N, C, I);
    cu_moe_scatter_add(dln2, m->dxe, ba->row_of, N, K, C);
    int seq = c->balance == BALANCE_SEQAUX || c->balance == BALANCE_BIAS_SEQAUX, batch = c->balance == BALANCE_AUX;
    if ((seq || batch) && c->aux_alpha > 0.0f)
        cu_moe_gate_backward_aux(m->dlogits, m->dwts, ba->scores, ba->sel, N, E, K, c->score_func, c->route_scale,
                                 ba->aux_f, seq ? m->T : N, seq ? m->B : 1, c->aux_alpha, m->grad_scale);
    else
        cu_moe_gate_backward(m->dlogits, m->dwts, ba->scores, ba->sel, N, E, K, c->score_func, c->route_scale);
    cu_matmul_backward(dln2, gp->gate, m->dlogits, ba->ln2, lp->gate, N, C, E);
}

static void block_backward(CudaModel *m, int l, float *dx) {
    const ModelConfig *c = &m->cfg;
    const LayerParams *lp = &m->p.layers[l];
    LayerParams *gp = &m->g.layers[l];
    BlockActs *ba = &m->acts[l];
    int N = m->B * m->T, C = c->dim;
    cu_zero(m->dln2, sizeof(float) * (size_t)N * C);
    if (lp->is_moe) {
        moe_backward(m, lp, gp, ba, dx, m->dln2);
    } else {
        int I = c->inter_dim;
        cu_zero(m->dg, sizeof(float) * (size_t)N * I);
        cu_zero(m->dh1, sizeof(float) * (size_t)N * I);
        cu_zero(m->dh3, sizeof(float) * (size_t)N * I);
        mm_bwd(m, m->dg, gp->w2, dx, ba->g, lp->w2, N, I, C);
        cu_swiglu_backward(m->dh1, m->dh3, m->dg, ba->h1, ba->h3, (long)N * I);
        mm_bwd(m, m->dln2, gp->w1, m->dh1, ba->ln2, lp->w1, N, C, I);
        mm_bwd(m, m->dln2, gp->w3, m->dh3, ba->ln2, lp->w3, N, C, I);
    }
    cu_rmsnorm_backward(dx, C, gp->ffn_norm, m->dln2, ba->x_mid, C, lp->ffn_norm, ba->ln2_rstd, N, C);
    attention_block_backward(m, l, dx);
}

extern "C" {

float cuda_model_forward(CudaModel *m, const int *inputs, const int *targets, int B, int T) {
    const ModelConfig *c = &m->cfg;
    if (B > m->B_max || T > m->T_max || B <= 0 || T <= 0) {
        fprintf(stderr, "error: cuda_model_forward batch %d x %d exceeds the allocated %d x %d\n", B, T, m->B_max,
                m->T_max);
        exit(EXIT_FAILURE);
    }
    int N = B * T, C = c->dim, V = c->vocab_size, L = c->n_layers;
    for (int n = 0; n < N; n++) {
        if (inputs[n] < 0 || inputs[n] >= V || (targets && (targets[n] < -1 || targets[n] >= V))) {
            fprintf(stderr, "error: token %d at position %d is outside the vocabulary (%d)\n",
                    inputs[n] < 0 || inputs[n] >= V ? inputs[n] : targets[n], n, V);
            exit(EXIT_FAILURE);
        }
    }
    m->B = B;
    m->T = T;
    int *pos = (int *)mallocCheck(sizeof(int) * (size_t)N);
    for (int n = 0; n < N; n++) pos[n] = n % T;
    cu_upload(m->pos, pos, sizeof(int) * (size_t)N);
    free(pos);
    cu_upload(m->inputs, inputs, sizeof(int) * (size_t)N);
    cu_zero(m->loss_dev, sizeof(float) * 4);
    cu_encoder_forward(m->acts[0].x_in, m->inputs, m->p.wte, N, C);
    for (int l = 0; l < L; l++) {
        float *x_out = l + 1 < L ? m->acts[l + 1].x_in : m->x_final;
        if (l + 1 < L)
            block_forward(m, l, x_out, B, T, l > 0, m->p.layers[l + 1].attn_norm, m->acts[l + 1].ln1,
                          m->acts[l + 1].ln1_rstd);
        else
            block_forward(m, l, x_out, B, T, l > 0, m->p.final_norm, m->lnf, m->lnf_rstd);
    }
    cu_matmul_forward(m->logits, m->lnf, m->p.lm_head, N, C, V);
    m->loss = m->ce_loss = m->aux_loss = m->mtp_loss = 0.0f;
    m->n_valid = 0;
    if (!targets) return 0.0f;
    cu_upload(m->targets, targets, sizeof(int) * (size_t)N);
    cu_crossentropy_forward(m->lse, m->loss_dev + 1, m->n_valid_dev, m->ce_scr, m->logits, m->targets, N, V);
    if (c->mtp_depth > 0) {
        // MTP depth 1: h'_i = eh_proj [enorm(emb(t_{i+1})); hnorm(h_i)] -> block -> norm -> head -> t_{i+2}
        int *tok = (int *)mallocCheck(sizeof(int) * 2 * (size_t)N);
        for (int n = 0; n < N; n++) {
            int t = n % T;
            tok[n] = targets[n] >= 0 ? targets[n] : 0;
            tok[N + n] = (t + 1 < T && targets[n] >= 0) ? targets[n + 1] : -1;
        }
        cu_upload(m->mtp_emb_tok, tok, sizeof(int) * (size_t)N);
        cu_upload(m->mtp_targets, tok + N, sizeof(int) * (size_t)N);
        free(tok);
        cu_encoder_forward(m->mtp_emb, m->mtp_emb_tok, m->p.wte, N, C);
        cu_rmsnorm_forward(m->mtp_en, m->mtp_en_rstd, m->mtp_emb, C, m->p.mtp_enorm, N, C, c->norm_eps);
        cu_rmsnorm_forward(m->mtp_hn, m->mtp_hn_rstd, m->x_final, C, m->p.mtp_hnorm, N, C, c->norm_eps);
        copy_cols(m->mtp_cat, 2 * C, 0, m->mtp_en, C, 0, N, C);
        copy_cols(m->mtp_cat, 2 * C, C, m->mtp_hn, C, 0, N, C);
        mm_fwd(m, m->acts[L].x_in, m->mtp_cat, m->p.mtp_proj, N, 2 * C, C);
        block_forward(m, L, m->mtp_x_out, B, T, 0, m->p.mtp_norm, m->mtp_ln, m->mtp_ln_rstd);
        cu_matmul_forward(m->mtp_logits, m->mtp_ln, m->p.lm_head, N, C, V);
        cu_crossentropy_forward(m->mtp_lse, m->loss_dev + 3, m->n_valid_dev + 1, m->ce_scr, m->mtp_logits,
                                m->mtp_targets, N, V);
    }
    float l[4];
    cu_download(l, m->loss_dev, sizeof l);  // the one device-to-host copy of the step
    m->ce_loss = l[1];
    m->aux_loss = l[2];
    m->mtp_loss = l[3];
    m->loss = m->ce_loss;
    if (c->mtp_depth > 0) m->loss += c->mtp_lambda * m->mtp_loss;
    m->loss += m->aux_loss;
    return m->loss;
}

void cuda_model_download_logits(const CudaModel *m, float *logits) {
    cu_download(logits, m->logits, sizeof(float) * (size_t)m->B * m->T * m->cfg.vocab_size);
}

void cuda_model_backward(CudaModel *m) {
    const ModelConfig *c = &m->cfg;
    int N = m->B * m->T, C = c->dim, V = c->vocab_size, L = c->n_layers;
    cu_zero(m->dx, sizeof(float) * (size_t)N * C);
    cu_zero(m->dlnf, sizeof(float) * (size_t)N * C);
    cu_crossentropy_backward(m->logits, m->lse, m->targets, N, V, m->grad_scale, m->n_valid_dev);
    cu_matmul_backward(m->dlnf, m->g.lm_head, m->logits, m->lnf, m->p.lm_head, N, C, V);
    cu_rmsnorm_backward(m->dx, C, m->g.final_norm, m->dlnf, m->x_final, C, m->p.final_norm, m->lnf_rstd, N, C);
    if (c->mtp_depth > 0) {
        cu_zero(m->dmx, sizeof(float) * (size_t)N * C);
        cu_zero(m->dmln, sizeof(float) * (size_t)N * C);
        cu_crossentropy_backward(m->mtp_logits, m->mtp_lse, m->mtp_targets, N, V, m->grad_scale * c->mtp_lambda,
                                 m->n_valid_dev + 1);
        cu_matmul_backward(m->dmln, m->g.lm_head, m->mtp_logits, m->mtp_ln, m->p.lm_head, N, C, V);
        cu_rmsnorm_backward(m->dmx, C, m->g.mtp_norm, m->dmln, m->mtp_x_out, C, m->p.mtp_norm, m->mtp_ln_rstd, N, C);
        block_backward(m, L, m->dmx);  // dmx is now the gradient of the MTP block input
        cu_zero(m->dcat, sizeof(float) * (size_t)N * 2 * C);
        mm_bwd(m, m->dcat, m->g.mtp_proj, m->dmx, m->mtp_cat, m->p.mtp_proj, N, 2 * C, C);
        copy_cols(m->den, C, 0, m->dcat, 2 * C, 0, N, C);
        copy_cols(m->dhn, C, 0, m->dcat, 2 * C, C, N, C);
        cu_zero(m->demb, sizeof(float) * (size_t)N * C);
        cu_rmsnorm_backward(m->demb, C, m->g.mtp_enorm, m->den, m->mtp_emb, C, m->p.mtp_enorm, m->mtp_en_rstd, N, C);
        cu_rmsnorm_backward(m->dx, C, m->g.mtp_hnorm, m->dhn, m->x_final, C, m->p.mtp_hnorm, m->mtp_hn_rstd, N, C);
        // tokens whose target was ignored embedded token 0 as a stand-in: no gradient flows through it
        LAUNCH(zero_masked_rows_kernel, ceil_div((long)N * C, 256), 256, 0, 0, m->demb, m->targets, N, C);
        cu_encoder_backward(m->g.wte, m->demb, m->mtp_emb_tok, N, C);
    }
    for (int l = L - 1; l >= 0; l--) block_backward(m, l, m->dx);
    cu_encoder_backward(m->g.wte, m->dx, m->inputs, N, C);
}

void cuda_model_set_grad_scale(CudaModel *m, float scale) { m->grad_scale = scale; }

int cuda_model_grads_nonfinite(CudaModel *m) {
    cu_zero(m->flag_dev, sizeof(int));
    cu_nonfinite_flag(m->flag_dev, m->grads, m->num_params);
    int flag = 0;
    cu_download(&flag, m->flag_dev, sizeof(int));
    return flag;
}

void cuda_model_zero_grad(CudaModel *m) { cu_zero(m->grads, sizeof(float) * m->num_params); }

float cuda_model_grad_norm(CudaModel *m) {
    cu_global_norm(m->norm_dev, m->grads, m->num_params, m->norm_scr);
    float norm;
    cu_download(&norm, m->norm_dev, sizeof(float));
    return norm;
}

void cuda_model_adamw(CudaModel *m, float lr, float beta1, float beta2, float eps, float weight_decay,
                      float grad_scale, int t) {
    float b1c = 1.0f - powf(beta1, (float)t), b2c = 1.0f - powf(beta2, (float)t);
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const TensorInfo *info = &m->tensors[ti];
        float wd = info->decay ? weight_decay : 0.0f;
        size_t o = info->offset;
        if (m->bf16) {
            cu_adamw_bf16(m->params16 + o, m->params + o, m->grads + o, m->m + o, m->v + o, info->numel, lr, beta1,
                          beta2, eps, wd, grad_scale, b1c, b2c, (unsigned)t * 2654435761u + (unsigned)ti);
            continue;
        }
        cu_adamw(m->params + o, m->grads + o, m->m + o, m->v + o, info->numel, lr, beta1, beta2, eps, wd, grad_scale,
                 b1c, b2c);
    }
}

void cuda_model_update_bias(CudaModel *m) {
    const ModelConfig *c = &m->cfg;
    if (!cfg_uses_bias(c)) return;
    int E = c->n_routed_experts;
    for (int i = 0; i < m->n_moe; i++)
        cu_bias_update(m->bias + (size_t)m->moe_block[i] * E, m->load + (size_t)i * E, E, c->bias_update_speed);
}

void cuda_model_routing_reset(CudaModel *m) {
    int E = m->cfg.n_routed_experts > 0 ? m->cfg.n_routed_experts : 1;
    cu_zero(m->load, sizeof(float) * (size_t)(m->n_moe > 0 ? m->n_moe : 1) * E);
    cu_zero(m->dropped, sizeof(float) * (size_t)(m->n_moe > 0 ? m->n_moe : 1));
    cu_zero(m->stats, sizeof(float) * 2 * (size_t)(m->n_moe > 0 ? m->n_moe : 1));
}

void cuda_model_losses(const CudaModel *m, float *ce, float *aux, float *mtp) {
    if (ce) *ce = m->ce_loss;
    if (aux) *aux = m->aux_loss;
    if (mtp) *mtp = m->mtp_loss;
}

int cuda_model_routing_stats(const CudaModel *m, int i, float *load, float *dropped, float *entropy_sum,
                             float *top1_sum) {
    if (i >= 0 && i < m->n_moe) {
        int E = m->cfg.n_routed_experts;
        float st[2];
        if (load) cu_download(load, m->load + (size_t)i * E, sizeof(float) * E);
        if (dropped) cu_download(dropped, m->dropped + i, sizeof(float));
        cu_download(st, m->stats + 2 * i, sizeof st);
        if (entropy_sum) *entropy_sum = st[0];
        if (top1_sum) *top1_sum = st[1];
    }
    return m->n_moe;
}

}  // extern "C"
