// The whole model on the GPU, step by step the same computation as model/cpu/model.c (read
// side by side), built from the kernels of cuda_ops.h. See cuda_model.h for the precision
// rules: a GEMM operand is of the activation type `dt`; what a GEMM or a reduction
// accumulates into is fp32.
extern "C" {
#include "../model.h"  // C declarations first: config.h must get C linkage
}

#include "attention_cudnn.h"
#include "cuda_common.cuh"
#include "cuda_model.h"
#include "cuda_ops.h"

#include <math.h>
#include <string.h>

#define MAX_BLOCKS 64

// allocation categories: the fields of CudaPlan (plan.h)
enum { CAT_WORKING, CAT_MASTER, CAT_OPT, CAT_GRADS, CAT_ACTS, CAT_LOGITS, CAT_SCRATCH, CAT_N };

// one block's tensors kept from forward to backward
typedef struct {
    int is_moe;
    // fp32
    float *x_in, *x_mid;                               // (N, C) the residual stream entering / after attention
    float *ln1_rstd, *qa_rstd, *ckv_rstd, *ln2_rstd;   // (N)
    float *lse;                                        // (B, H, T) of the flash attention
    float *scores, *wts, *aux_f;                       // (N, E) (N, K) (B + 1, E)
    int *sel, *row_of, *perm, *expert_off;             // (N, K) (N*K) (N*K) (E + 1)
    // activation type; ln1, qan, ckvn, ln2, g, eg, sg point to shared buffers when recomputing
    void *ln1, *qa, *qan, *q, *kva, *ckvn, *kf, *vf, *atto, *ln2;
    void *h1, *h3, *g;                                 // dense (N, I)
    void *xe, *eh1, *eh3, *eg, *ey;                    // routed experts (N*K, C | I)
    void *sh1, *sh3, *sg;                              // shared experts (N, S*I)
} DevBlock;

struct CudaModel {
    ModelConfig cfg;
    int n_blocks, B_max, T_max, dt, recompute;
    size_t es;  // bytes of an activation
    size_t num_params;
    float *params, *grads, *m, *v;  // device, num_params each (fp32)
    void *pw;                       // working copy (dt) of the weights; NULL in fp32 (the master is used)
    ParamPtrs p, g;                 // device pointers into params / grads
    LayerParams lp[2][MAX_BLOCKS];
    TensorInfo *tensors;            // host
    int n_tensors;
    DevBlock blk[MAX_BLOCKS];
    // forward
    float *x_final, *lnf_rstd, *lse;  // (N, C) (N) (N)
    void *lnf, *logits;               // (N, C) (N, V) activation type
    int *inputs, *targets, *pos;
    int pos_T, pos_N;                 // positions uploaded for this T and N
    // the embedding's backward, planned on the host (cu_encoder_backward_plan) for the inputs
    // [0] and the MTP block's embedded tokens [1]: device order (N), seg (N + 1), seg_tok (N)
    int *enc_order[2], *enc_seg[2], *enc_tok[2], enc_nseg[2];
    int *enc_host, *enc_count;        // host: 3N + 1 ints of plan, V + 1 of counting scratch
    void *kv;                         // (N, H*(nope+dv)) scratch: wkv_b's output until assembled
    float *ffn_y, *rlogits, *router_in;  // (N, C) FFN output, (N, E) router logits, (N, C) fp32 router input
    // backward (fp32 unless said)
    float *dx, *dln1, *dln2, *datto, *dqf, *dkf, *dvf, *dkva, *dckvn, *dqan, *dqa, *att_scr;
    void *dkv, *dconv;                // activation type: assembled dk_nope/dv; fp32 gradients converted for a GEMM
    float *dg;                        // dense (N, I)
    void *dh1, *dh3;
    float *dsg, *deg, *dxe, *dwts, *dlogits;  // MoE
    void *dsh1, *dsh3, *dey, *deh1, *deh3;
    float *ce_scr, *loss_dev, *norm_scr, *stats_scr, *seg_scr;
    int *n_valid_dev, *flag_dev;
    // the statistics block: one download per step. [0] gradient norm, then load (n_moe, E),
    // dropped (n_moe), entropy / top-1 sums (n_moe, 2), biases (n_blocks, E)
    int n_moe, moe_block[MAX_BLOCKS];
    float *sblock, *norm_dev, *load, *dropped, *stats, *bias;
    float *sblock_host;
    size_t sblock_floats;
    // MTP (depth 1)
    float *mtp_emb, *mtp_en_rstd, *mtp_hn_rstd, *mtp_x_out, *mtp_ln_rstd, *mtp_lse;
    void *mtp_en, *mtp_hn, *mtp_cat, *mtp_ln, *mtp_logits;
    float *dmx, *dcat, *den, *dhn, *demb;
    int *mtp_targets, *mtp_emb_tok;
    float grad_scale;  // loss scale of backward (1 unless fp16 loss scaling)
    int use_cudnn;     // attention through cuDNN's SDPA where it accepts the call (else the flash kernels)
    size_t bytes[CAT_N];
    // last forward
    float ce_loss, aux_loss, mtp_loss, loss;
    int B, T;
};

static int block_is_moe(const ModelConfig *c, int l) {
    if (l < c->n_layers) return cfg_is_moe_layer(c, l);
    return c->n_layers > c->n_dense_layers;
}

// device memory of n elements of `size` bytes, zeroed, counted in a category
static void *dalloc(CudaModel *m, int cat, size_t n, size_t size) {
    size_t b = size * (n ? n : 1);
    void *p = cu_malloc(b);
    cu_zero(p, b);
    m->bytes[cat] += b;
    return p;
}
static float *falloc(CudaModel *m, int cat, size_t n) { return (float *)dalloc(m, cat, n, sizeof(float)); }
static int *ialloc(CudaModel *m, int cat, size_t n) { return (int *)dalloc(m, cat, n, sizeof(int)); }
static void *aalloc(CudaModel *m, int cat, size_t n) { return dalloc(m, cat, n, m->es); }
// byte offset of element i in a buffer of the activation type
static void *aoff(const CudaModel *m, const void *p, size_t i) { return (char *)p + m->es * i; }

// the weights a GEMM reads: the working copy (dt) of a master tensor, or the master in fp32
static const void *W(const CudaModel *m, const float *w) {
    return m->pw ? (const void *)((const char *)m->pw + m->es * (size_t)(w - m->params)) : (const void *)w;
}

// an fp32 tensor as a GEMM operand: itself in fp32, else converted into the scratch `to`
static const void *as_act(CudaModel *m, const float *x, void *to, long n) {
    if (m->dt == CU_F32) return x;
    cu_convert(to, m->dt, x, CU_F32, n);
    return to;
}

// ---- small kernels of the attention block ------------------------------------------------

// kf (N, H, dqk) = per head [k_nope_h, k_pe]; vf (N, H, dv) = v_h; from kv (N, H*(nope+dv)) and
// kva (N, kvr+rope) whose last rope values are the shared k_pe
template <typename T>
__global__ void assemble_kv_kernel(T *kf, T *vf, const T *kv, const T *kva, int N, int H, int nope, int rope, int dv,
                                   int kvr) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int dqk = nope + rope, w = dqk + dv;
    if (i >= (long)N * H * w) return;
    int j = (int)(i % w);
    long nh = i / w;
    int h = (int)(nh % H);
    long n = nh / H;
    const T *kvn = kv + n * H * (nope + dv) + (long)h * (nope + dv);
    if (j < nope) kf[nh * dqk + j] = kvn[j];
    else if (j < dqk) kf[nh * dqk + j] = kva[n * (kvr + rope) + kvr + (j - nope)];
    else vf[nh * dv + (j - dqk)] = kvn[nope + (j - dqk)];
}

// backward of assemble_kv: dkv (N, H*(nope+dv), type T) = [dk_nope_h, dv_h] (written: a GEMM
// operand), and dkva[:, kvr:] (N, rope, fp32) += sum over heads of dk_pe (one thread per (n, i))
template <typename T>
__global__ void assemble_kv_backward_kernel(T *dkv, float *dkva, const float *dkf, const float *dvf, int N, int H,
                                            int nope, int rope, int dv, int kvr) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int dqk = nope + rope, w = nope + dv;
    long n_split = (long)N * H * w;
    if (i < n_split) {
        int j = (int)(i % w);
        long nh = i / w;
        dkv[i] = stf<T>(j < nope ? dkf[nh * dqk + j] : dvf[nh * dv + (j - nope)]);
    } else if (i < n_split + (long)N * rope) {
        long r = i - n_split;
        int j = (int)(r % rope);
        long n = r / rope;
        float s = 0.0f;
        for (int h = 0; h < H; h++) s += dkf[(n * H + h) * dqk + nope + j];
        dkva[n * (kvr + rope) + kvr + j] += s;
    }
}

// dst[n, dst_off + j] = src[n, src_off + j] for j < W (strided row blocks of one type)
template <typename T>
__global__ void copy_cols_kernel(T *dst, int dst_stride, int dst_off, const T *src, int src_stride, int src_off, int N,
                                 int W) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * W) return;
    long n = i / W;
    int j = (int)(i % W);
    dst[n * dst_stride + dst_off + j] = src[n * src_stride + src_off + j];
}
static void copy_cols(void *dst, int dst_stride, int dst_off, const void *src, int src_stride, int src_off, int N,
                      int W, int dt) {
    if ((long)N * W <= 0) return;
    DISPATCH_DT(dt, T,
                LAUNCH(copy_cols_kernel<T>, ceil_div((long)N * W, 256), 256, 0, 0, (T *)dst, dst_stride, dst_off,
                       (const T *)src, src_stride, src_off, N, W));
}

// rows n with mask[n] < 0 set to zero
__global__ void zero_masked_rows_kernel(float *x, const int *mask, int N, int C) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long)N * C && mask[i / C] < 0) x[i] = 0.0f;
}

// ---- matmuls --------------------------------------------------------------------------------

// out (N, OC) of out_dt = inp (N, IC) @ w (OC, IC)^T; inp of the activation type, w a master tensor
static void mm_fwd(CudaModel *m, void *out, int out_dt, const void *inp, const float *w, int N, int IC, int OC) {
    cu_matmul_forward(out, out_dt, inp, W(m, w), N, IC, OC, m->dt);
}
// dinp (fp32) += dout @ w; dw (fp32) += dout^T @ inp; dout and inp of the activation type
static void mm_bwd(CudaModel *m, float *dinp, float *dw, const void *dout, const void *inp, const float *w, int N,
                   int IC, int OC) {
    cu_matmul_backward(dinp, dw, dout, inp, W(m, w), N, IC, OC, m->dt);
}

// ---- create / free ------------------------------------------------------------------------

static void carve_block(CudaModel *m, DevBlock *b, int is_moe) {
    const ModelConfig *c = &m->cfg;
    size_t N = (size_t)m->B_max * m->T_max;
    int C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim, rc = m->recompute;
    memset(b, 0, sizeof(*b));
    b->is_moe = is_moe;
    b->x_in = falloc(m, CAT_ACTS, N * C);
    b->x_mid = falloc(m, CAT_ACTS, N * C);
    b->ln1_rstd = falloc(m, CAT_ACTS, N);
    b->ckv_rstd = falloc(m, CAT_ACTS, N);
    b->ln2_rstd = falloc(m, CAT_ACTS, N);
    b->lse = falloc(m, CAT_ACTS, (size_t)m->B_max * H * m->T_max);
    if (!rc) b->ln1 = aalloc(m, CAT_ACTS, N * C);
    if (c->q_lora_rank > 0) {
        b->qa = aalloc(m, CAT_ACTS, N * c->q_lora_rank);
        if (!rc) b->qan = aalloc(m, CAT_ACTS, N * c->q_lora_rank);
        b->qa_rstd = falloc(m, CAT_ACTS, N);
    }
    b->q = aalloc(m, CAT_ACTS, N * H * dqk);  // RoPE is applied in place: q is the attention's query
    b->kva = aalloc(m, CAT_ACTS, N * (c->kv_lora_rank + c->qk_rope_dim));
    if (!rc) b->ckvn = aalloc(m, CAT_ACTS, N * c->kv_lora_rank);
    b->kf = aalloc(m, CAT_ACTS, N * H * dqk);
    b->vf = aalloc(m, CAT_ACTS, N * H * dv);
    b->atto = aalloc(m, CAT_ACTS, N * H * dv);
    if (!rc) b->ln2 = aalloc(m, CAT_ACTS, N * C);
    if (!is_moe) {
        b->h1 = aalloc(m, CAT_ACTS, N * c->inter_dim);
        b->h3 = aalloc(m, CAT_ACTS, N * c->inter_dim);
        if (!rc) b->g = aalloc(m, CAT_ACTS, N * c->inter_dim);
    } else {
        int E = c->n_routed_experts, K = c->top_k, I = c->moe_inter_dim, S = c->n_shared_experts;
        b->scores = falloc(m, CAT_ACTS, N * E);
        b->wts = falloc(m, CAT_ACTS, N * K);
        b->sel = ialloc(m, CAT_ACTS, N * K);
        b->row_of = ialloc(m, CAT_ACTS, N * K);
        b->perm = ialloc(m, CAT_ACTS, N * K);
        b->expert_off = ialloc(m, CAT_ACTS, (size_t)E + 1);
        b->aux_f = falloc(m, CAT_ACTS, (size_t)(m->B_max + 1) * E);
        b->xe = aalloc(m, CAT_ACTS, N * K * C);
        b->eh1 = aalloc(m, CAT_ACTS, N * K * I);
        b->eh3 = aalloc(m, CAT_ACTS, N * K * I);
        if (!rc) b->eg = aalloc(m, CAT_ACTS, N * K * I);
        b->ey = aalloc(m, CAT_ACTS, N * K * C);
        if (S > 0) {
            b->sh1 = aalloc(m, CAT_ACTS, N * S * I);
            b->sh3 = aalloc(m, CAT_ACTS, N * S * I);
            if (!rc) b->sg = aalloc(m, CAT_ACTS, N * S * I);
        }
    }
}

static void free_block(DevBlock *b, int recompute) {
    void *own[] = {b->x_in, b->x_mid, b->ln1_rstd, b->qa_rstd, b->ckv_rstd, b->ln2_rstd, b->lse, b->scores, b->wts,
                   b->aux_f, b->sel, b->row_of, b->perm, b->expert_off, b->qa, b->q, b->kva, b->kf, b->vf, b->atto,
                   b->h1, b->h3, b->xe, b->eh1, b->eh3, b->ey, b->sh1, b->sh3};
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) cu_free(own[i]);
    if (!recompute) {
        void *kept[] = {b->ln1, b->qan, b->ckvn, b->ln2, b->g, b->eg, b->sg};
        for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) cu_free(kept[i]);
    }
}

extern "C" {

int cuda_model_create(CudaModel **out, const ModelConfig *cfg, int B_max, int T_max, int precision, int recompute,
                      MoeErr *err) {
    *out = NULL;
    if (config_validate(cfg, err) != 0) return -1;
    if (cfg->n_layers + cfg->mtp_depth > MAX_BLOCKS - 1) return moe_err_set(err, "config: n_layers too large (max 63)");
    if (B_max <= 0 || T_max <= 0 || T_max > cfg->max_seq_len)
        return moe_err_set(err, "cuda model: batch %d x %d is invalid (max_seq_len %d)", B_max, T_max, cfg->max_seq_len);
    if (cfg->mtp_depth > 1) return moe_err_set(err, "cuda model: mtp_depth must be 0 or 1");
    if (cfg->n_routed_experts > 256 || cfg->top_k > 16 || cfg->n_expert_groups > 64)
        return moe_err_set(err, "cuda model: at most 256 routed experts, top_k 16, 64 expert groups");
    if (cfg_qk_head_dim(cfg) > 256 || cfg->v_head_dim > 256)
        return moe_err_set(err, "cuda model: head sizes above 256 are not supported");
    if (precision != CU_F32 && precision != CU_BF16 && precision != CU_F16)
        return moe_err_set(err, "cuda model: precision %d is not fp32 (0), bf16 (1) or fp16 (2)", precision);
    if (!cu_supports_dtype(precision))
        return moe_err_set(err, "cuda model: this GPU (compute capability %d.%d) has no %s tensor cores (%s needs %s)",
                           cu_compute_capability() / 10, cu_compute_capability() % 10, cu_dtype_name(precision),
                           cu_dtype_name(precision), precision == CU_BF16 ? "8.0" : "7.0");
    CudaModel *m = (CudaModel *)calloc(1, sizeof(CudaModel));
    if (!m) return moe_err_set(err, "out of memory");
    const ModelConfig *c = cfg;
    m->cfg = *cfg;
    m->n_blocks = c->n_layers + c->mtp_depth;
    m->B_max = B_max;
    m->T_max = T_max;
    m->dt = precision;
    m->es = cu_dtype_size(precision);
    m->recompute = recompute != 0;
    m->grad_scale = 1.0f;
    m->num_params = model_layout(c, NULL, &m->n_tensors);
    m->tensors = (TensorInfo *)calloc((size_t)m->n_tensors, sizeof(TensorInfo));
    model_layout(c, m->tensors, &m->n_tensors);
    m->params = falloc(m, CAT_MASTER, m->num_params);
    m->grads = falloc(m, CAT_GRADS, m->num_params);
    m->m = falloc(m, CAT_OPT, m->num_params);
    m->v = falloc(m, CAT_OPT, m->num_params);
    if (m->dt != CU_F32) m->pw = aalloc(m, CAT_WORKING, m->num_params);
    model_point(c, m->params, &m->p, m->lp[0]);
    model_point(c, m->grads, &m->g, m->lp[1]);
    for (int l = 0; l < m->n_blocks; l++)
        if (block_is_moe(c, l)) m->moe_block[m->n_moe++] = l;
    int E = c->n_routed_experts > 0 ? c->n_routed_experts : 1;
    // the statistics block
    int nm = m->n_moe > 0 ? m->n_moe : 1;
    m->sblock_floats = 1 + (size_t)nm * E + nm + 2 * (size_t)nm + (size_t)m->n_blocks * E;
    m->sblock = falloc(m, CAT_SCRATCH, m->sblock_floats);
    m->sblock_host = (float *)calloc(m->sblock_floats, sizeof(float));
    m->norm_dev = m->sblock;
    m->load = m->norm_dev + 1;
    m->dropped = m->load + (size_t)nm * E;
    m->stats = m->dropped + nm;
    m->bias = m->stats + 2 * (size_t)nm;

    size_t N = (size_t)B_max * T_max;
    int C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim, V = c->vocab_size;
    int kvr = c->kv_lora_rank, rope = c->qk_rope_dim, nope = c->qk_nope_dim, qr = c->q_lora_rank;
    for (int l = 0; l < m->n_blocks; l++) carve_block(m, &m->blk[l], block_is_moe(c, l));
    if (m->recompute) {  // one buffer for all blocks: written in forward, recomputed in backward
        void *ln1 = aalloc(m, CAT_SCRATCH, N * C), *ln2 = aalloc(m, CAT_SCRATCH, N * C);
        void *ckvn = aalloc(m, CAT_SCRATCH, N * kvr), *qan = qr > 0 ? aalloc(m, CAT_SCRATCH, N * qr) : NULL;
        void *g = c->n_dense_layers > 0 && c->n_layers > 0 ? aalloc(m, CAT_SCRATCH, N * c->inter_dim) : NULL;
        void *eg = NULL, *sg = NULL;
        if (m->n_moe > 0) {
            eg = aalloc(m, CAT_SCRATCH, N * c->top_k * c->moe_inter_dim);
            if (c->n_shared_experts > 0) sg = aalloc(m, CAT_SCRATCH, N * c->n_shared_experts * c->moe_inter_dim);
        }
        for (int l = 0; l < m->n_blocks; l++) {
            DevBlock *b = &m->blk[l];
            b->ln1 = ln1, b->ln2 = ln2, b->ckvn = ckvn, b->qan = qan;
            if (b->is_moe) b->eg = eg, b->sg = sg;
            else b->g = g;
        }
    }
    m->x_final = falloc(m, CAT_ACTS, N * C);
    m->lnf = aalloc(m, CAT_ACTS, N * C);
    m->lnf_rstd = falloc(m, CAT_ACTS, N);
    m->logits = aalloc(m, CAT_LOGITS, N * V);
    m->lse = falloc(m, CAT_LOGITS, N);
    m->inputs = ialloc(m, CAT_ACTS, N);
    m->targets = ialloc(m, CAT_ACTS, N);
    m->pos = ialloc(m, CAT_ACTS, N);
    for (int i = 0; i < 1 + (c->mtp_depth > 0); i++) {
        m->enc_order[i] = ialloc(m, CAT_ACTS, N);
        m->enc_seg[i] = ialloc(m, CAT_ACTS, N + 1);
        m->enc_tok[i] = ialloc(m, CAT_ACTS, N);
    }
    m->enc_host = (int *)mallocCheck(sizeof(int) * (3 * N + 1));
    m->enc_count = (int *)mallocCheck(sizeof(int) * ((size_t)V + 1));
    m->kv = aalloc(m, CAT_SCRATCH, N * H * (nope + dv));
    m->ffn_y = falloc(m, CAT_SCRATCH, N * C);
    // backward: per-block gradients live in buffers shared by all blocks
    m->dx = falloc(m, CAT_SCRATCH, N * C);
    m->dln1 = falloc(m, CAT_SCRATCH, N * C);
    m->dln2 = falloc(m, CAT_SCRATCH, N * C);
    m->datto = falloc(m, CAT_SCRATCH, N * H * dv);
    m->dqf = falloc(m, CAT_SCRATCH, N * H * dqk);
    m->dkf = falloc(m, CAT_SCRATCH, N * H * dqk);
    m->dvf = falloc(m, CAT_SCRATCH, N * H * dv);
    m->dkv = aalloc(m, CAT_SCRATCH, N * H * (nope + dv));
    m->dkva = falloc(m, CAT_SCRATCH, N * (kvr + rope));
    m->dckvn = falloc(m, CAT_SCRATCH, N * kvr);
    if (qr > 0) {
        m->dqan = falloc(m, CAT_SCRATCH, N * qr);
        m->dqa = falloc(m, CAT_SCRATCH, N * qr);
    }
    m->att_scr = falloc(m, CAT_SCRATCH, (size_t)B_max * H * T_max);
    if (m->dt != CU_F32) {  // the widest fp32 gradient converted for a GEMM: dx, dq, dkva, dqa
        int w = C;
        if (H * dqk > w) w = H * dqk;
        if (kvr + rope > w) w = kvr + rope;
        if (qr > w) w = qr;
        m->dconv = aalloc(m, CAT_SCRATCH, N * w);
    }
    if (c->n_dense_layers > 0 && c->n_layers > 0) {
        int I = c->inter_dim;
        m->dg = falloc(m, CAT_SCRATCH, N * I);
        m->dh1 = aalloc(m, CAT_SCRATCH, N * I);
        m->dh3 = aalloc(m, CAT_SCRATCH, N * I);
    }
    if (m->n_moe > 0) {
        int K = c->top_k, I = c->moe_inter_dim, SI = c->n_shared_experts * I;
        m->rlogits = falloc(m, CAT_SCRATCH, N * E);
        if (m->dt != CU_F32) m->router_in = falloc(m, CAT_SCRATCH, N * C);
        if (SI > 0) {
            m->dsg = falloc(m, CAT_SCRATCH, N * SI);
            m->dsh1 = aalloc(m, CAT_SCRATCH, N * SI);
            m->dsh3 = aalloc(m, CAT_SCRATCH, N * SI);
        }
        m->dey = aalloc(m, CAT_SCRATCH, N * K * C);
        m->deg = falloc(m, CAT_SCRATCH, N * K * I);
        m->deh1 = aalloc(m, CAT_SCRATCH, N * K * I);
        m->deh3 = aalloc(m, CAT_SCRATCH, N * K * I);
        m->dxe = falloc(m, CAT_SCRATCH, N * K * C);
        m->dwts = falloc(m, CAT_SCRATCH, N * K);
        m->dlogits = falloc(m, CAT_SCRATCH, N * E);
        m->seg_scr = falloc(m, CAT_SCRATCH, (size_t)B_max + 1);
        m->stats_scr = falloc(m, CAT_SCRATCH, 2 * N);
    }
    m->ce_scr = falloc(m, CAT_SCRATCH, N);
    m->loss_dev = falloc(m, CAT_SCRATCH, 4);  // [1] cross-entropy, [2] balancing losses, [3] MTP
    m->norm_scr = falloc(m, CAT_SCRATCH, 1024);
    m->n_valid_dev = ialloc(m, CAT_SCRATCH, 2);  // main, MTP
    m->flag_dev = ialloc(m, CAT_SCRATCH, 1);
    if (c->mtp_depth > 0) {
        m->mtp_emb = falloc(m, CAT_ACTS, N * C);
        m->mtp_en = aalloc(m, CAT_ACTS, N * C), m->mtp_en_rstd = falloc(m, CAT_ACTS, N);
        m->mtp_hn = aalloc(m, CAT_ACTS, N * C), m->mtp_hn_rstd = falloc(m, CAT_ACTS, N);
        m->mtp_cat = aalloc(m, CAT_ACTS, N * 2 * C);
        m->mtp_x_out = falloc(m, CAT_ACTS, N * C);
        m->mtp_ln = aalloc(m, CAT_ACTS, N * C), m->mtp_ln_rstd = falloc(m, CAT_ACTS, N);
        m->mtp_targets = ialloc(m, CAT_ACTS, N), m->mtp_emb_tok = ialloc(m, CAT_ACTS, N);
        m->mtp_logits = aalloc(m, CAT_LOGITS, N * V), m->mtp_lse = falloc(m, CAT_LOGITS, N);
        m->dmx = falloc(m, CAT_SCRATCH, N * C), m->dcat = falloc(m, CAT_SCRATCH, N * 2 * C);
        m->den = falloc(m, CAT_SCRATCH, N * C), m->dhn = falloc(m, CAT_SCRATCH, N * C);
        m->demb = falloc(m, CAT_SCRATCH, N * C);
    }
    *out = m;
    return 0;
}

void cuda_model_free(CudaModel *m) {
    if (!m) return;
    for (int l = 0; l < m->n_blocks; l++) free_block(&m->blk[l], m->recompute);
    if (m->recompute && m->n_blocks > 0) {
        const DevBlock *b0 = &m->blk[0];
        cu_free(b0->ln1), cu_free(b0->ln2), cu_free(b0->ckvn), cu_free(b0->qan);
        void *g = NULL, *eg = NULL, *sg = NULL;
        for (int l = 0; l < m->n_blocks; l++) {
            if (m->blk[l].g) g = m->blk[l].g;
            if (m->blk[l].eg) eg = m->blk[l].eg;
            if (m->blk[l].sg) sg = m->blk[l].sg;
        }
        cu_free(g), cu_free(eg), cu_free(sg);
    }
    void *ptrs[] = {m->params, m->grads, m->m, m->v, m->pw, m->sblock, m->x_final, m->lnf, m->lnf_rstd, m->logits,
                    m->lse, m->inputs, m->targets, m->pos, m->kv, m->ffn_y, m->rlogits, m->router_in, m->dx, m->dln1,
                    m->dln2, m->datto, m->dqf, m->dkf, m->dvf, m->dkv, m->dkva, m->dckvn, m->dqan, m->dqa, m->att_scr,
                    m->dconv, m->dg, m->dh1, m->dh3, m->dsg, m->dsh1, m->dsh3, m->dey, m->deg, m->deh1, m->deh3,
                    m->dxe, m->dwts, m->dlogits, m->seg_scr, m->stats_scr, m->ce_scr, m->loss_dev, m->norm_scr,
                    m->n_valid_dev, m->flag_dev, m->mtp_emb, m->mtp_en, m->mtp_en_rstd, m->mtp_hn, m->mtp_hn_rstd,
                    m->mtp_cat, m->mtp_x_out, m->mtp_ln, m->mtp_ln_rstd, m->mtp_targets, m->mtp_emb_tok,
                    m->mtp_logits, m->mtp_lse, m->dmx, m->dcat, m->den, m->dhn, m->demb};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) cu_free(ptrs[i]);
    for (int i = 0; i < 2; i++) cu_free(m->enc_order[i]), cu_free(m->enc_seg[i]), cu_free(m->enc_tok[i]);
    free(m->enc_host);
    free(m->enc_count);
    free(m->sblock_host);
    free(m->tensors);
    free(m);
}

size_t cuda_model_num_params(const CudaModel *m) { return m->num_params; }

int cuda_model_use_cudnn_attention(CudaModel *m, int on, int B, int T, const char **reason) {
    const ModelConfig *c = &m->cfg;
    m->use_cudnn = on && cu_cudnn_attention_supported(B, T, c->n_heads, cfg_qk_head_dim(c), c->v_head_dim, m->dt);
    if (reason) *reason = on ? cu_cudnn_attention_reason() : "not asked for";
    return m->use_cudnn;
}
int cuda_model_precision(const CudaModel *m) { return m->dt; }

void cuda_model_allocated(const CudaModel *m, CudaPlan *p) {
    memset(p, 0, sizeof(*p));
    p->num_params = m->num_params;
    p->params = m->bytes[CAT_WORKING];
    p->master = m->bytes[CAT_MASTER];
    p->optimizer = m->bytes[CAT_OPT];
    p->grads = m->bytes[CAT_GRADS];
    p->acts = m->bytes[CAT_ACTS];
    p->logits = m->bytes[CAT_LOGITS];
    p->scratch = m->bytes[CAT_SCRATCH];
    p->total = p->params + p->master + p->optimizer + p->grads + p->acts + p->logits + p->scratch;
}

void cuda_model_upload_params(CudaModel *m, const float *params) {
    cu_upload(m->params, params, sizeof(float) * m->num_params);
    if (m->pw) cu_convert(m->pw, m->dt, m->params, CU_F32, (long)m->num_params);
}

// the seed of tensor ti's stochastic rounding in AdamW step t
static unsigned sr_seed(int t, int ti) { return (unsigned)t * 2654435761u + (unsigned)ti; }

void cuda_model_refresh_working(CudaModel *m, int t) {
    if (!m->pw) return;
    if (t <= 0 || m->dt != CU_BF16) {
        cu_convert(m->pw, m->dt, m->params, CU_F32, (long)m->num_params);
        return;
    }
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const TensorInfo *info = &m->tensors[ti];
        cu_f32_to_bf16_stochastic((uint16_t *)aoff(m, m->pw, info->offset), m->params + info->offset,
                                  (long)info->numel, sr_seed(t, ti));
    }
}

void cuda_model_download_working(const CudaModel *m, uint16_t *w) {
    if (m->pw) cu_download(w, m->pw, sizeof(uint16_t) * m->num_params);
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

// ---- forward --------------------------------------------------------------------------------

// ln1_done: ln1 and ln1_rstd were computed by the previous block's fused residual + norm.
// Ends with x_mid = x_in + attention and ln2 = rmsnorm(x_mid) in one fused kernel.
static void attention_block_forward(CudaModel *m, const LayerParams *lp, DevBlock *b, int B, int T, int ln1_done) {
    const ModelConfig *c = &m->cfg;
    int N = B * T, C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim, dt = m->dt;
    int nope = c->qk_nope_dim, rope = c->qk_rope_dim, kvr = c->kv_lora_rank;
    if (!ln1_done) cu_rmsnorm_forward(b->ln1, dt, b->ln1_rstd, b->x_in, C, CU_F32, lp->attn_norm, N, C, c->norm_eps);
    if (c->q_lora_rank > 0) {
        int qr = c->q_lora_rank;
        mm_fwd(m, b->qa, dt, b->ln1, lp->wq_a, N, C, qr);
        cu_rmsnorm_forward(b->qan, dt, b->qa_rstd, b->qa, qr, dt, lp->q_norm, N, qr, c->norm_eps);
        mm_fwd(m, b->q, dt, b->qan, lp->wq_b, N, qr, H * dqk);
    } else {
        mm_fwd(m, b->q, dt, b->ln1, lp->wq, N, C, H * dqk);
    }
    mm_fwd(m, b->kva, dt, b->ln1, lp->wkv_a, N, C, kvr + rope);
    cu_rmsnorm_forward(b->ckvn, dt, b->ckv_rstd, b->kva, kvr + rope, dt, lp->kv_norm, N, kvr, c->norm_eps);
    mm_fwd(m, m->kv, dt, b->ckvn, lp->wkv_b, N, kvr, H * (nope + dv));
    cu_rope_apply(aoff(m, b->q, nope), dt, N, H, H * dqk, dqk, rope, m->pos, c->rope_theta, 0);
    long total = (long)N * H * (dqk + dv);
    DISPATCH_DT(dt, TT,
                LAUNCH(assemble_kv_kernel<TT>, ceil_div(total, 256), 256, 0, 0, (TT *)b->kf, (TT *)b->vf,
                       (const TT *)m->kv, (const TT *)b->kva, N, H, nope, rope, dv, kvr));
    cu_rope_apply(aoff(m, b->kf, nope), dt, N, H, H * dqk, dqk, rope, m->pos, c->rope_theta, 0);
    float scale = 1.0f / sqrtf((float)dqk);
    if (!m->use_cudnn || cu_cudnn_attention_forward(b->atto, b->lse, b->q, b->kf, b->vf, B, T, H, dqk, dv, scale, dt))
        cu_attention_forward(b->atto, b->lse, b->q, b->kf, b->vf, B, T, H, dqk, dv, scale, dt);
    mm_fwd(m, b->x_mid, CU_F32, b->atto, lp->wo, N, H * dv, C);
    cu_residual_rmsnorm_forward(b->x_mid, b->ln2, dt, b->ln2_rstd, b->x_mid, b->x_in, lp->ffn_norm, N, C, c->norm_eps);
}

// the embedding backward's plan of tokens tok (N, host) into slot i
static void plan_encoder_backward(CudaModel *m, int i, const int *tok, int N) {
    int *order = m->enc_host, *seg = order + N, *seg_tok = seg + N + 1;
    int ns = cu_encoder_backward_plan(tok, N, m->cfg.vocab_size, order, seg, seg_tok, m->enc_count);
    cu_upload(m->enc_order[i], order, sizeof(int) * (size_t)N);
    cu_upload(m->enc_seg[i], seg, sizeof(int) * (size_t)(ns + 1));
    cu_upload(m->enc_tok[i], seg_tok, sizeof(int) * (size_t)ns);
    m->enc_nseg[i] = ns;
}

static int moe_index(const CudaModel *m, int l) {
    for (int i = 0; i < m->n_moe; i++)
        if (m->moe_block[i] == l) return i;
    return -1;
}

// the router reads an fp32 image of ln2 with the fp32 master weights of the gate
static const float *router_input(CudaModel *m, const DevBlock *b, int N) {
    if (m->dt == CU_F32) return (const float *)b->ln2;
    cu_convert(m->router_in, CU_F32, b->ln2, m->dt, (long)N * m->cfg.dim);
    return m->router_in;
}

static void moe_forward(CudaModel *m, int l, const LayerParams *lp, DevBlock *b, int B, int T) {
    const ModelConfig *c = &m->cfg;
    int N = B * T, C = c->dim, E = c->n_routed_experts, K = c->top_k, I = c->moe_inter_dim, dt = m->dt;
    int SI = c->n_shared_experts * I, mi = moe_index(m, l);
    const float *sel_bias = cfg_uses_bias(c) ? m->bias + (size_t)l * E : NULL;
    cu_matmul_forward(m->rlogits, CU_F32, router_input(m, b, N), lp->gate, N, C, E, CU_F32);
    cu_moe_scores(b->scores, m->rlogits, N, E, c->score_func);
    cu_moe_route(b->sel, b->wts, b->scores, sel_bias, N, E, K, c->n_expert_groups, c->n_limited_groups, c->score_func,
                 c->route_scale);
    long cap = c->capacity_factor > 0.0f ? (long)ceil((double)c->capacity_factor * N * K / E) : (long)N * K;
    cu_moe_dispatch(b->row_of, b->perm, b->expert_off, m->load + (size_t)mi * E, m->dropped + mi, b->sel, N, K, E,
                    cap);
    cu_moe_routing_stats(m->stats + 2 * mi, m->stats + 2 * mi + 1, m->stats_scr, b->scores, b->wts, N, E, K);
    int seq = c->balance == BALANCE_SEQAUX || c->balance == BALANCE_BIAS_SEQAUX, batch = c->balance == BALANCE_AUX;
    if ((seq || batch) && c->aux_alpha > 0.0f)
        cu_moe_aux_forward(b->aux_f, m->loss_dev + 2, m->seg_scr, b->scores, b->sel, seq ? B : 1, seq ? T : N, E, K,
                           c->aux_alpha);
    cu_moe_gather(b->xe, b->ln2, b->perm, b->expert_off, N, K, C, E, dt);
    cu_grouped_matmul_forward(b->eh1, dt, b->xe, W(m, lp->ew1), b->expert_off, E, N, C, I, dt);
    cu_grouped_matmul_forward(b->eh3, dt, b->xe, W(m, lp->ew3), b->expert_off, E, N, C, I, dt);
    cu_swiglu_forward(b->eg, b->eh1, b->eh3, (long)N * K * I, dt);
    cu_grouped_matmul_forward(b->ey, dt, b->eg, W(m, lp->ew2), b->expert_off, E, N, I, C, dt);
    if (SI > 0) {
        mm_fwd(m, b->sh1, dt, b->ln2, lp->sw1, N, C, SI);
        mm_fwd(m, b->sh3, dt, b->ln2, lp->sw3, N, C, SI);
        cu_swiglu_forward(b->sg, b->sh1, b->sh3, (long)N * SI, dt);
        mm_fwd(m, m->ffn_y, CU_F32, b->sg, lp->sw2, N, SI, C);
    } else {
        cu_zero(m->ffn_y, sizeof(float) * (size_t)N * C);
    }
    cu_moe_combine(m->ffn_y, b->ey, b->wts, b->row_of, N, K, C, dt);
}

// x_out = x_mid + ffn_y fused with the norm that reads it next (next_w: its weight, into
// next_ln (activation type) / next_rstd)
static void block_forward(CudaModel *m, int l, float *x_out, int B, int T, int ln1_done, const float *next_w,
                          void *next_ln, float *next_rstd) {
    const ModelConfig *c = &m->cfg;
    const LayerParams *lp = &m->p.layers[l];
    DevBlock *b = &m->blk[l];
    int N = B * T, C = c->dim, dt = m->dt;
    attention_block_forward(m, lp, b, B, T, ln1_done);
    if (lp->is_moe) {
        moe_forward(m, l, lp, b, B, T);
    } else {
        int I = c->inter_dim;
        mm_fwd(m, b->h1, dt, b->ln2, lp->w1, N, C, I);
        mm_fwd(m, b->h3, dt, b->ln2, lp->w3, N, C, I);
        cu_swiglu_forward(b->g, b->h1, b->h3, (long)N * I, dt);
        mm_fwd(m, m->ffn_y, CU_F32, b->g, lp->w2, N, I, C);
    }
    cu_residual_rmsnorm_forward(x_out, next_ln, dt, next_rstd, b->x_mid, m->ffn_y, next_w, N, C, c->norm_eps);
}

// ---- backward -------------------------------------------------------------------------------

// recomputation of what a recompute run did not keep (a no-op otherwise)
static void recompute_ln1(CudaModel *m, const LayerParams *lp, DevBlock *b, int N) {
    if (m->recompute)
        cu_rmsnorm_forward(b->ln1, m->dt, b->ln1_rstd, b->x_in, m->cfg.dim, CU_F32, lp->attn_norm, N, m->cfg.dim,
                           m->cfg.norm_eps);
}
static void recompute_ln2(CudaModel *m, const LayerParams *lp, DevBlock *b, int N) {
    if (m->recompute)
        cu_rmsnorm_forward(b->ln2, m->dt, b->ln2_rstd, b->x_mid, m->cfg.dim, CU_F32, lp->ffn_norm, N, m->cfg.dim,
                           m->cfg.norm_eps);
}

static void attention_block_backward(CudaModel *m, int l, float *dx) {
    const ModelConfig *c = &m->cfg;
    const LayerParams *lp = &m->p.layers[l];
    LayerParams *gp = &m->g.layers[l];
    DevBlock *b = &m->blk[l];
    int B = m->B, T = m->T, N = B * T, C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim;
    int nope = c->qk_nope_dim, rope = c->qk_rope_dim, kvr = c->kv_lora_rank, dt = m->dt;
    cu_zero(m->datto, sizeof(float) * (size_t)N * H * dv);
    mm_bwd(m, m->datto, gp->wo, as_act(m, dx, m->dconv, (long)N * C), b->atto, lp->wo, N, H * dv, C);
    cu_zero(m->dqf, sizeof(float) * (size_t)N * H * dqk);
    cu_zero(m->dkf, sizeof(float) * (size_t)N * H * dqk);
    cu_zero(m->dvf, sizeof(float) * (size_t)N * H * dv);
    float scale = 1.0f / sqrtf((float)dqk);
    // the forward output of the attention is atto (its row sums with dout are the softmax terms)
    if (!m->use_cudnn || cu_cudnn_attention_backward(m->dqf, m->dkf, m->dvf, m->datto, b->atto, b->lse, b->q, b->kf,
                                                     b->vf, B, T, H, dqk, dv, scale, dt))
        cu_attention_backward(m->dqf, m->dkf, m->dvf, m->att_scr, m->datto, b->atto, b->lse, b->q, b->kf, b->vf, B, T, H,
                              dqk, dv, scale, dt);
    cu_rope_apply(m->dqf + nope, CU_F32, N, H, H * dqk, dqk, rope, m->pos, c->rope_theta, 1);
    cu_rope_apply(m->dkf + nope, CU_F32, N, H, H * dqk, dqk, rope, m->pos, c->rope_theta, 1);
    cu_zero(m->dkva, sizeof(float) * (size_t)N * (kvr + rope));
    long total = (long)N * H * (nope + dv) + (long)N * rope;
    DISPATCH_DT(dt, TT,
                LAUNCH(assemble_kv_backward_kernel<TT>, ceil_div(total, 256), 256, 0, 0, (TT *)m->dkv, m->dkva,
                       m->dkf, m->dvf, N, H, nope, rope, dv, kvr));
    if (m->recompute)
        cu_rmsnorm_forward(b->ckvn, dt, b->ckv_rstd, b->kva, kvr + rope, dt, lp->kv_norm, N, kvr, c->norm_eps);
    cu_zero(m->dckvn, sizeof(float) * (size_t)N * kvr);
    mm_bwd(m, m->dckvn, gp->wkv_b, m->dkv, b->ckvn, lp->wkv_b, N, kvr, H * (nope + dv));
    cu_rmsnorm_backward(m->dkva, kvr + rope, gp->kv_norm, m->dckvn, b->kva, kvr + rope, dt, lp->kv_norm, b->ckv_rstd,
                        N, kvr);
    recompute_ln1(m, lp, b, N);
    cu_zero(m->dln1, sizeof(float) * (size_t)N * C);
    mm_bwd(m, m->dln1, gp->wkv_a, as_act(m, m->dkva, m->dconv, (long)N * (kvr + rope)), b->ln1, lp->wkv_a, N, C,
           kvr + rope);
    const void *dq = as_act(m, m->dqf, m->dconv, (long)N * H * dqk);
    if (c->q_lora_rank > 0) {
        int qr = c->q_lora_rank;
        if (m->recompute) cu_rmsnorm_forward(b->qan, dt, b->qa_rstd, b->qa, qr, dt, lp->q_norm, N, qr, c->norm_eps);
        cu_zero(m->dqan, sizeof(float) * (size_t)N * qr);
        cu_zero(m->dqa, sizeof(float) * (size_t)N * qr);
        mm_bwd(m, m->dqan, gp->wq_b, dq, b->qan, lp->wq_b, N, qr, H * dqk);
        cu_rmsnorm_backward(m->dqa, qr, gp->q_norm, m->dqan, b->qa, qr, dt, lp->q_norm, b->qa_rstd, N, qr);
        mm_bwd(m, m->dln1, gp->wq_a, as_act(m, m->dqa, m->dconv, (long)N * qr), b->ln1, lp->wq_a, N, C, qr);
    } else {
        mm_bwd(m, m->dln1, gp->wq, dq, b->ln1, lp->wq, N, C, H * dqk);
    }
    cu_rmsnorm_backward(dx, C, gp->attn_norm, m->dln1, b->x_in, C, CU_F32, lp->attn_norm, b->ln1_rstd, N, C);
}

static void moe_backward(CudaModel *m, const LayerParams *lp, LayerParams *gp, DevBlock *b, const float *dy,
                         float *dln2) {
    const ModelConfig *c = &m->cfg;
    int N = m->B * m->T, C = c->dim, E = c->n_routed_experts, K = c->top_k, I = c->moe_inter_dim, dt = m->dt;
    int SI = c->n_shared_experts * I, NK = N * K;
    if (SI > 0) {
        if (m->recompute) cu_swiglu_forward(b->sg, b->sh1, b->sh3, (long)N * SI, dt);
        cu_zero(m->dsg, sizeof(float) * (size_t)N * SI);
        mm_bwd(m, m->dsg, gp->sw2, as_act(m, dy, m->dconv, (long)N * C), b->sg, lp->sw2, N, SI, C);
        cu_swiglu_backward(m->dsh1, m->dsh3, m->dsg, b->sh1, b->sh3, (long)N * SI, dt);
        mm_bwd(m, dln2, gp->sw1, m->dsh1, b->ln2, lp->sw1, N, C, SI);
        mm_bwd(m, dln2, gp->sw3, m->dsh3, b->ln2, lp->sw3, N, C, SI);
    }
    cu_moe_combine_backward(m->dey, m->dwts, dy, b->ey, b->wts, b->perm, b->row_of, b->expert_off, N, K, C, E, dt);
    if (m->recompute) cu_swiglu_forward(b->eg, b->eh1, b->eh3, (long)NK * I, dt);
    cu_zero(m->deg, sizeof(float) * (size_t)NK * I);
    cu_zero(m->dxe, sizeof(float) * (size_t)NK * C);
    cu_grouped_matmul_backward(m->deg, gp->ew2, m->dey, b->eg, W(m, lp->ew2), b->expert_off, E, N, I, C, dt);
    cu_swiglu_backward(m->deh1, m->deh3, m->deg, b->eh1, b->eh3, (long)NK * I, dt);
    cu_grouped_matmul_backward(m->dxe, gp->ew1, m->deh1, b->xe, W(m, lp->ew1), b->expert_off, E, N, C, I, dt);
    cu_grouped_matmul_backward(m->dxe, gp->ew3, m->deh3, b->xe, W(m, lp->ew3), b->expert_off, E, N, C, I, dt);
    cu_moe_scatter_add(dln2, m->dxe, b->row_of, N, K, C);
    int seq = c->balance == BALANCE_SEQAUX || c->balance == BALANCE_BIAS_SEQAUX, batch = c->balance == BALANCE_AUX;
    if ((seq || batch) && c->aux_alpha > 0.0f)
        cu_moe_gate_backward_aux(m->dlogits, m->dwts, b->scores, b->sel, N, E, K, c->score_func, c->route_scale,
                                 b->aux_f, seq ? m->T : N, seq ? m->B : 1, c->aux_alpha, m->grad_scale);
    else
        cu_moe_gate_backward(m->dlogits, m->dwts, b->scores, b->sel, N, E, K, c->score_func, c->route_scale);
    cu_matmul_backward(dln2, gp->gate, m->dlogits, router_input(m, b, N), lp->gate, N, C, E, CU_F32);
}

static void block_backward(CudaModel *m, int l, float *dx) {
    const ModelConfig *c = &m->cfg;
    const LayerParams *lp = &m->p.layers[l];
    LayerParams *gp = &m->g.layers[l];
    DevBlock *b = &m->blk[l];
    int N = m->B * m->T, C = c->dim, dt = m->dt;
    recompute_ln2(m, lp, b, N);
    cu_zero(m->dln2, sizeof(float) * (size_t)N * C);
    if (lp->is_moe) {
        moe_backward(m, lp, gp, b, dx, m->dln2);
    } else {
        int I = c->inter_dim;
        if (m->recompute) cu_swiglu_forward(b->g, b->h1, b->h3, (long)N * I, dt);
        cu_zero(m->dg, sizeof(float) * (size_t)N * I);
        mm_bwd(m, m->dg, gp->w2, as_act(m, dx, m->dconv, (long)N * C), b->g, lp->w2, N, I, C);
        cu_swiglu_backward(m->dh1, m->dh3, m->dg, b->h1, b->h3, (long)N * I, dt);
        mm_bwd(m, m->dln2, gp->w1, m->dh1, b->ln2, lp->w1, N, C, I);
        mm_bwd(m, m->dln2, gp->w3, m->dh3, b->ln2, lp->w3, N, C, I);
    }
    cu_rmsnorm_backward(dx, C, gp->ffn_norm, m->dln2, b->x_mid, C, CU_F32, lp->ffn_norm, b->ln2_rstd, N, C);
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
    int N = B * T, C = c->dim, V = c->vocab_size, L = c->n_layers, dt = m->dt;
    for (int n = 0; n < N; n++) {
        if (inputs[n] < 0 || inputs[n] >= V || (targets && (targets[n] < -1 || targets[n] >= V))) {
            fprintf(stderr, "error: token %d at position %d is outside the vocabulary (%d)\n",
                    inputs[n] < 0 || inputs[n] >= V ? inputs[n] : targets[n], n, V);
            exit(EXIT_FAILURE);
        }
    }
    m->B = B;
    m->T = T;
    if (m->pos_T != T || m->pos_N != N) {  // positions: uploaded when the shape changes
        int *pos = (int *)mallocCheck(sizeof(int) * (size_t)N);
        for (int n = 0; n < N; n++) pos[n] = n % T;
        cu_upload(m->pos, pos, sizeof(int) * (size_t)N);
        free(pos);
        m->pos_T = T, m->pos_N = N;
    }
    cu_upload(m->inputs, inputs, sizeof(int) * (size_t)N);
    cu_zero(m->loss_dev, sizeof(float) * 4);
    cu_encoder_forward(m->blk[0].x_in, m->inputs, m->p.wte, N, C);
    for (int l = 0; l < L; l++) {
        if (l + 1 < L)
            block_forward(m, l, m->blk[l + 1].x_in, B, T, l > 0, m->p.layers[l + 1].attn_norm, m->blk[l + 1].ln1,
                          m->blk[l + 1].ln1_rstd);
        else
            block_forward(m, l, m->x_final, B, T, l > 0, m->p.final_norm, m->lnf, m->lnf_rstd);
    }
    mm_fwd(m, m->logits, dt, m->lnf, m->p.lm_head, N, C, V);
    m->loss = m->ce_loss = m->aux_loss = m->mtp_loss = 0.0f;
    if (!targets) return 0.0f;
    cu_upload(m->targets, targets, sizeof(int) * (size_t)N);
    plan_encoder_backward(m, 0, inputs, N);  // only a forward with targets is followed by a backward
    cu_crossentropy_forward(m->lse, m->loss_dev + 1, m->n_valid_dev, m->ce_scr, m->logits, m->targets, N, V, dt);
    if (c->mtp_depth > 0) {
        // MTP depth 1: h'_i = eh_proj [enorm(emb(t_{i+1})); hnorm(h_i)] -> block -> norm -> head -> t_{i+2}
        int *tok = (int *)mallocCheck(sizeof(int) * 2 * (size_t)N);
        for (int n = 0; n < N; n++) {
            int t = n % T;
            tok[n] = targets[n] >= 0 ? targets[n] : 0;
            tok[N + n] = (t + 1 < T && targets[n] >= 0) ? targets[n + 1] : -1;
        }
        cu_upload(m->mtp_emb_tok, tok, sizeof(int) * (size_t)N);
        plan_encoder_backward(m, 1, tok, N);
        cu_upload(m->mtp_targets, tok + N, sizeof(int) * (size_t)N);
        free(tok);
        cu_encoder_forward(m->mtp_emb, m->mtp_emb_tok, m->p.wte, N, C);
        cu_rmsnorm_forward(m->mtp_en, dt, m->mtp_en_rstd, m->mtp_emb, C, CU_F32, m->p.mtp_enorm, N, C, c->norm_eps);
        cu_rmsnorm_forward(m->mtp_hn, dt, m->mtp_hn_rstd, m->x_final, C, CU_F32, m->p.mtp_hnorm, N, C, c->norm_eps);
        copy_cols(m->mtp_cat, 2 * C, 0, m->mtp_en, C, 0, N, C, dt);
        copy_cols(m->mtp_cat, 2 * C, C, m->mtp_hn, C, 0, N, C, dt);
        mm_fwd(m, m->blk[L].x_in, CU_F32, m->mtp_cat, m->p.mtp_proj, N, 2 * C, C);
        block_forward(m, L, m->mtp_x_out, B, T, 0, m->p.mtp_norm, m->mtp_ln, m->mtp_ln_rstd);
        mm_fwd(m, m->mtp_logits, dt, m->mtp_ln, m->p.lm_head, N, C, V);
        cu_crossentropy_forward(m->mtp_lse, m->loss_dev + 3, m->n_valid_dev + 1, m->ce_scr, m->mtp_logits,
                                m->mtp_targets, N, V, dt);
    }
    float l[4];
    cu_download(l, m->loss_dev, sizeof l);  // the one device-to-host copy of the forward
    m->ce_loss = l[1];
    m->aux_loss = l[2];
    m->mtp_loss = l[3];
    m->loss = m->ce_loss;
    if (c->mtp_depth > 0) m->loss += c->mtp_lambda * m->mtp_loss;
    m->loss += m->aux_loss;
    return m->loss;
}

void cuda_model_download_logits(const CudaModel *m, float *logits) {
    size_t n = (size_t)m->B * m->T * m->cfg.vocab_size;
    if (m->dt == CU_F32) {
        cu_download(logits, m->logits, sizeof(float) * n);
        return;
    }
    // widened on the device into a temporary buffer (tests only: not on the training path)
    float *tmp = (float *)cu_malloc(sizeof(float) * n);
    cu_convert(tmp, CU_F32, m->logits, m->dt, (long)n);
    cu_download(logits, tmp, sizeof(float) * n);
    cu_free(tmp);
}

void cuda_model_download_routing(const CudaModel *m, int i, int *sel) {
    if (i < 0 || i >= m->n_moe) return;
    cu_download(sel, m->blk[m->moe_block[i]].sel, sizeof(int) * (size_t)m->B * m->T * m->cfg.top_k);
}

void cuda_model_backward(CudaModel *m) {
    const ModelConfig *c = &m->cfg;
    int N = m->B * m->T, C = c->dim, V = c->vocab_size, L = c->n_layers, dt = m->dt;
    float *dlnf = m->dln2;  // free until the last block's backward
    cu_zero(m->dx, sizeof(float) * (size_t)N * C);
    cu_zero(dlnf, sizeof(float) * (size_t)N * C);
    cu_crossentropy_backward(m->logits, m->lse, m->targets, N, V, m->grad_scale, m->n_valid_dev, dt);
    mm_bwd(m, dlnf, m->g.lm_head, m->logits, m->lnf, m->p.lm_head, N, C, V);
    cu_rmsnorm_backward(m->dx, C, m->g.final_norm, dlnf, m->x_final, C, CU_F32, m->p.final_norm, m->lnf_rstd, N, C);
    if (c->mtp_depth > 0) {
        float *dmln = m->dln1;  // free until the MTP block's backward
        cu_zero(m->dmx, sizeof(float) * (size_t)N * C);
        cu_zero(dmln, sizeof(float) * (size_t)N * C);
        cu_crossentropy_backward(m->mtp_logits, m->mtp_lse, m->mtp_targets, N, V, m->grad_scale * c->mtp_lambda,
                                 m->n_valid_dev + 1, dt);
        mm_bwd(m, dmln, m->g.lm_head, m->mtp_logits, m->mtp_ln, m->p.lm_head, N, C, V);
        cu_rmsnorm_backward(m->dmx, C, m->g.mtp_norm, dmln, m->mtp_x_out, C, CU_F32, m->p.mtp_norm, m->mtp_ln_rstd, N,
                            C);
        block_backward(m, L, m->dmx);  // dmx is now the gradient of the MTP block input
        cu_zero(m->dcat, sizeof(float) * (size_t)N * 2 * C);
        mm_bwd(m, m->dcat, m->g.mtp_proj, as_act(m, m->dmx, m->dconv, (long)N * C), m->mtp_cat, m->p.mtp_proj, N,
               2 * C, C);
        copy_cols(m->den, C, 0, m->dcat, 2 * C, 0, N, C, CU_F32);
        copy_cols(m->dhn, C, 0, m->dcat, 2 * C, C, N, C, CU_F32);
        cu_zero(m->demb, sizeof(float) * (size_t)N * C);
        cu_rmsnorm_backward(m->demb, C, m->g.mtp_enorm, m->den, m->mtp_emb, C, CU_F32, m->p.mtp_enorm, m->mtp_en_rstd,
                            N, C);
        cu_rmsnorm_backward(m->dx, C, m->g.mtp_hnorm, m->dhn, m->x_final, C, CU_F32, m->p.mtp_hnorm, m->mtp_hn_rstd,
                            N, C);
        // tokens whose target was ignored embedded token 0 as a stand-in: no gradient flows through it
        LAUNCH(zero_masked_rows_kernel, ceil_div((long)N * C, 256), 256, 0, 0, m->demb, m->targets, N, C);
        cu_encoder_backward(m->g.wte, m->demb, m->enc_order[1], m->enc_seg[1], m->enc_tok[1], m->enc_nseg[1], C);
    }
    for (int l = L - 1; l >= 0; l--) block_backward(m, l, m->dx);
    cu_encoder_backward(m->g.wte, m->dx, m->enc_order[0], m->enc_seg[0], m->enc_tok[0], m->enc_nseg[0], C);
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

// AdamW of every tensor; norm (device) NULL: no clipping or skipping
static void adamw_all(CudaModel *m, float lr, float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                      int t, const float *norm, float grad_clip) {
    float b1c = 1.0f - powf(beta1, (float)t), b2c = 1.0f - powf(beta2, (float)t);
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const TensorInfo *info = &m->tensors[ti];
        float wd = info->decay ? weight_decay : 0.0f;
        size_t o = info->offset;
        cu_adamw(m->params + o, m->grads + o, m->m + o, m->v + o, info->numel, lr, beta1, beta2, eps, wd, grad_scale,
                 b1c, b2c, m->pw ? aoff(m, m->pw, o) : NULL, m->dt, sr_seed(t, ti), norm, grad_clip);
    }
}

void cuda_model_adamw(CudaModel *m, float lr, float beta1, float beta2, float eps, float weight_decay,
                      float grad_scale, int t) {
    adamw_all(m, lr, beta1, beta2, eps, weight_decay, grad_scale, t, NULL, 0.0f);
}

static void update_bias(CudaModel *m, const float *guard) {
    const ModelConfig *c = &m->cfg;
    if (!cfg_uses_bias(c)) return;
    int E = c->n_routed_experts;
    for (int i = 0; i < m->n_moe; i++)
        cu_bias_update(m->bias + (size_t)m->moe_block[i] * E, m->load + (size_t)i * E, E, c->bias_update_speed,
                       guard);
}
void cuda_model_update_bias(CudaModel *m) { update_bias(m, NULL); }

void cuda_model_fetch_stats(CudaModel *m) {
    cu_download(m->sblock_host, m->sblock, sizeof(float) * m->sblock_floats);
}

float cuda_model_step(CudaModel *m, float lr, float beta1, float beta2, float eps, float weight_decay, float grad_clip,
                      float grad_scale, int t) {
    cu_global_norm(m->norm_dev, m->grads, m->num_params, m->norm_scr);
    adamw_all(m, lr, beta1, beta2, eps, weight_decay, grad_scale, t, m->norm_dev, grad_clip);
    update_bias(m, m->norm_dev);
    cuda_model_fetch_stats(m);  // the one device-to-host copy of the step
    return m->sblock_host[0] * grad_scale;
}

void cuda_model_routing_reset(CudaModel *m) {
    int E = m->cfg.n_routed_experts > 0 ? m->cfg.n_routed_experts : 1;
    size_t nm = (size_t)(m->n_moe > 0 ? m->n_moe : 1);
    cu_zero(m->load, sizeof(float) * (nm * E + nm + 2 * nm));  // load, dropped, stats are contiguous
}

float *cuda_model_grads_device(CudaModel *m, size_t *n) {
    *n = m->num_params;
    return m->grads;
}

float *cuda_model_routing_device(CudaModel *m, size_t *n) {
    int E = m->cfg.n_routed_experts > 0 ? m->cfg.n_routed_experts : 1;
    size_t nm = (size_t)m->n_moe;
    *n = nm * E + nm + 2 * nm;  // load, dropped, stats are contiguous (as cuda_model_routing_reset zeroes them)
    return m->load;
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
        const float *h = m->sblock_host;
        size_t off_load = m->load - m->sblock, off_drop = m->dropped - m->sblock, off_st = m->stats - m->sblock;
        if (load) memcpy(load, h + off_load + (size_t)i * E, sizeof(float) * E);
        if (dropped) *dropped = h[off_drop + i];
        if (entropy_sum) *entropy_sum = h[off_st + 2 * i];
        if (top1_sum) *top1_sum = h[off_st + 2 * i + 1];
    }
    return m->n_moe;
}

void cuda_model_last_bias(const CudaModel *m, float *bias) {
    memcpy(bias, m->sblock_host + (m->bias - m->sblock), sizeof(float) * bias_floats(m));
}

}  // extern "C"
