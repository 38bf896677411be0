// GPU memory planner and peak-throughput table. See plan.h.
#include "plan.h"

#include <string.h>

#include "../model.h"

void cuda_default_config(ModelConfig *c, int *B, int *T) {
    config_default(c);
    c->vocab_size = 32768;
    c->dim = 768;
    c->n_layers = 10;
    c->n_dense_layers = 1;
    c->n_heads = 12;
    c->q_lora_rank = 0;
    c->kv_lora_rank = 256;
    c->qk_nope_dim = 64;
    c->qk_rope_dim = 32;
    c->v_head_dim = 64;
    c->inter_dim = 2048;
    c->moe_inter_dim = 512;
    c->n_routed_experts = 8;
    c->n_shared_experts = 1;
    c->top_k = 2;
    c->max_seq_len = 1024;
    if (B) *B = 8;
    if (T) *T = 1024;
}

static int block_is_moe(const ModelConfig *c, int l) {
    if (l < c->n_layers) return cfg_is_moe_layer(c, l);
    return c->n_layers > c->n_dense_layers;
}

// values kept for backward by one block per token (activation precision), and fp32/int words
static void block_acts(const ModelConfig *c, int is_moe, int recompute, double *vals, double *words) {
    double C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim;
    double qr = c->q_lora_rank, kvr = c->kv_lora_rank, rope = c->qk_rope_dim, nope = c->qk_nope_dim;
    double v = 0.0, w = 0.0;
    v += C;                               // x_in
    if (!recompute) v += C;               // ln1
    w += 1;                               // ln1_rstd
    if (qr > 0) v += qr + (recompute ? 0 : qr), w += 1;  // qa, qan, qa_rstd
    v += H * dqk;                         // q
    v += kvr + rope;                      // kva
    if (!recompute) v += kvr;             // ckvn
    w += 1;                               // ckv_rstd
    v += H * (nope + dv);                 // kv
    v += 2 * H * dqk + H * dv;            // qf kf vf
    w += H;                               // lse (flash attention keeps no T x T matrix)
    v += H * dv;                          // atto
    v += C;                               // x_mid
    if (!recompute) v += C;               // ln2
    w += 1;                               // ln2_rstd
    v += C;                               // ffn_y
    if (!is_moe) {
        v += (recompute ? 2 : 3) * (double)c->inter_dim;  // h1 h3 (g)
    } else {
        double E = c->n_routed_experts, K = c->top_k, I = c->moe_inter_dim, S = c->n_shared_experts;
        w += 2 * E + 4 * K;               // logits scores sel wts row_of perm
        v += 2 * K * C;                   // xe ey
        v += (recompute ? 2 : 3) * K * I; // eh1 eh3 (eg)
        v += (recompute ? 2 : 3) * S * I; // sh1 sh3 (sg)
    }
    *vals = v;
    *words = w;
}

int cuda_plan(const ModelConfig *c, int B, int T, int precision, int recompute, CudaPlan *p, MoeErr *err) {
    memset(p, 0, sizeof(*p));
    if (config_validate(c, err) != 0) return -1;
    if (B <= 0 || T <= 0 || T > c->max_seq_len)
        return moe_err_set(err, "plan: batch %d x %d is invalid (sequence length must be 1..%d)", B, T, c->max_seq_len);
    if (precision < PREC_FP32 || precision > PREC_FP16) return moe_err_set(err, "plan: unknown precision %d", precision);
    size_t ab = precision == PREC_FP32 ? 4 : 2;  // bytes of an activation / working weight
    double N = (double)B * T;
    size_t np = model_layout(c, NULL, NULL);
    p->num_params = np;
    p->params = precision == PREC_FP32 ? 0 : np * ab;
    p->master = np * 4;
    p->optimizer = np * 8;
    p->grads = np * ab;
    double vals = 0.0, words = 0.0;
    int nb = c->n_layers + c->mtp_depth;
    for (int l = 0; l < nb; l++) {
        double v, w;
        block_acts(c, block_is_moe(c, l), recompute, &v, &w);
        vals += v, words += w;
    }
    double C = c->dim, V = c->vocab_size;
    vals += 2 * C;      // x_final, lnf
    words += 4;         // lnf_rstd, targets, inputs, pos
    if (c->mtp_depth > 0) vals += 7 * C, words += 6;
    p->acts = (size_t)(N * (vals * (double)ab + words * 4.0));
    p->logits = (size_t)(N * (V * (double)ab + 4.0) * (c->mtp_depth > 0 ? 2 : 1));
    // backward buffers: gradients of a block's activations (attention, dense and MoE parts) + 2
    // residual gradients
    double blk = 0.0;
    {
        double H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim, kvr = c->kv_lora_rank;
        double attn = C + H * dv + 3 * H * dqk + H + H * (c->qk_nope_dim + dv) + kvr + (kvr + c->qk_rope_dim) +
                      2 * c->q_lora_rank;
        double dense = C + 3.0 * c->inter_dim;
        double moe = 0.0;
        if (c->n_layers > c->n_dense_layers) {
            double E = c->n_routed_experts, K = c->top_k, I = c->moe_inter_dim, S = c->n_shared_experts;
            moe = C + 2 * E + K + 2 * K * C + 3 * K * I + 3 * S * I;
        }
        blk = attn + dense + moe;  // the CUDA model keeps separate buffers for each kind of block
        if (c->mtp_depth > 0) blk += 6 * C;
    }
    p->scratch = (size_t)(N * (blk + 2 * C) * 4.0);  // fp32 gradients of activations
    p->workspace = (size_t)32 << 20;                  // cuBLAS(Lt) workspace and small buffers
    p->overhead = (size_t)400 << 20;                  // CUDA context, allocator slack (estimate)
    p->total = p->params + p->master + p->optimizer + p->grads + p->acts + p->logits + p->scratch + p->workspace +
               p->overhead;
    return 0;
}

void cuda_plan_print(const CudaPlan *p, FILE *fp) {
    double M = 1024.0 * 1024.0;
    fprintf(fp, "memory plan: %.1fM params | weights %.0f MiB, master %.0f MiB, AdamW %.0f MiB, grads %.0f MiB, "
                "activations %.0f MiB, logits %.0f MiB, scratch %.0f MiB, workspace+context %.0f MiB | total %.2f GiB\n",
            (double)p->num_params / 1e6, p->params / M, p->master / M, p->optimizer / M, p->grads / M, p->acts / M,
            p->logits / M, p->scratch / M, (p->workspace + p->overhead) / M, p->total / (M * 1024.0));
}

int cuda_plan_check(const CudaPlan *p, size_t free_bytes, int B, int recompute, MoeErr *err) {
    if (p->total <= free_bytes) return 0;
    double G = 1024.0 * 1024.0 * 1024.0;
    size_t fixed = p->params + p->master + p->optimizer + p->grads + p->workspace + p->overhead;
    if (fixed >= free_bytes)
        return moe_err_set(err, "the model needs %.2f GiB before any activation but the GPU has %.2f GiB free: "
                                "use a smaller model", fixed / G, free_bytes / G);
    // the per-sample part scales with the micro-batch
    double per_sample = (double)(p->acts + p->logits + p->scratch) / B;
    int fit = (int)((double)(free_bytes - fixed) / per_sample);
    if (fit >= 1)
        return moe_err_set(err, "the plan needs %.2f GiB but the GPU has %.2f GiB free: use micro-batch %d (with "
                                "gradient accumulation to keep the total batch)%s",
                           p->total / G, free_bytes / G, fit, recompute ? "" : ", or activation recomputation");
    return moe_err_set(err, "the plan needs %.2f GiB but the GPU has %.2f GiB free, even one sequence does not fit: "
                            "use a shorter context%s", p->total / G, free_bytes / G,
                       recompute ? "" : " or activation recomputation");
}

// ---------------------------------------------------------------------------------------
// dynamic loss scaling

void loss_scaler_init(LossScaler *ls, float initial_scale, int interval) {
    ls->scale = initial_scale > 0.0f ? initial_scale : 65536.0f;
    ls->good_steps = 0;
    ls->interval = interval > 0 ? interval : 2000;
    ls->skipped = 0;
}

int loss_scaler_update(LossScaler *ls, int found_nonfinite) {
    if (found_nonfinite) {
        ls->scale = ls->scale > 2.0f ? 0.5f * ls->scale : 1.0f;
        ls->good_steps = 0;
        ls->skipped++;
        return 0;
    }
    if (++ls->good_steps >= ls->interval) {
        if (ls->scale < 16777216.0f) ls->scale *= 2.0f;
        ls->good_steps = 0;
    }
    return 1;
}

// ---------------------------------------------------------------------------------------
// Peak dense TFLOP/s from the vendors' data sheets and architecture whitepapers. GeForce cards
// run bf16/fp16 tensor math with fp32 accumulation at half their fp16-accumulate rate.
typedef struct {
    const char *name;  // substring of the device name
    double tensor16;   // bf16/fp16 tensor cores, fp32 accumulate, dense
    double fp32;       // fp32 CUDA cores
} GpuPeak;

static const GpuPeak PEAKS[] = {
    {"H100 SXM", 989.4, 66.9}, {"H100 PCIe", 756.0, 51.2}, {"H100 NVL", 835.0, 60.0}, {"H100", 989.4, 66.9},
    {"H200", 989.4, 66.9},     {"H800", 989.4, 66.9},      {"A100", 312.0, 19.5},     {"A800", 312.0, 19.5},
    {"A10G", 70.0, 31.2},      {"A6000", 154.8, 38.7},     {"L40S", 362.1, 91.6},     {"L4", 121.0, 30.3},
    {"RTX 4090", 165.2, 82.6}, {"RTX 4080", 97.5, 48.7},   {"RTX 3090 Ti", 80.0, 40.0}, {"RTX 3090", 71.0, 35.6},
    {"RTX 3080", 59.5, 29.8},  {"RTX 3070", 40.6, 20.3},   {"RTX 3060", 25.6, 12.7},  {"T4", 65.0, 8.1},
    {"V100", 125.0, 15.7},
};

double gpu_peak_tflops(const char *device_name, int precision) {
    if (!device_name) return -1.0;
    for (size_t i = 0; i < sizeof PEAKS / sizeof PEAKS[0]; i++)
        if (strstr(device_name, PEAKS[i].name)) return precision == PREC_FP32 ? PEAKS[i].fp32 : PEAKS[i].tensor16;
    return -1.0;
}

double gpu_mfu(double flops_per_second, const char *device_name, int precision) {
    double peak = gpu_peak_tflops(device_name, precision);
    if (peak <= 0.0) return -1.0;
    return flops_per_second / (peak * 1e12);
}
