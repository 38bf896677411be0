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

// The allocations of model/cuda/model.cu (cuda_model_create), buffer by buffer: per token
// counts of activation-type values (A), fp32 values (F) and ints (I), and fixed counts. Keep
// the two in step: test_cuda_model compares them category by category.
typedef struct {
    double acts, logits, scratch;  // bytes
} PlanBytes;

int cuda_plan(const ModelConfig *c, int B, int T, int precision, int recompute, CudaPlan *p, MoeErr *err) {
    memset(p, 0, sizeof(*p));
    if (config_validate(c, err) != 0) return -1;
    if (B <= 0 || T <= 0 || T > c->max_seq_len)
        return moe_err_set(err, "plan: batch %d x %d is invalid (sequence length must be 1..%d)", B, T, c->max_seq_len);
    if (precision < PREC_FP32 || precision > PREC_FP16) return moe_err_set(err, "plan: unknown precision %d", precision);
    int rc = recompute != 0;
    double A = precision == PREC_FP32 ? 4.0 : 2.0, F = 4.0, Iw = 4.0;  // bytes of an activation, a float, an int
    double N = (double)B * T;
    size_t np = model_layout(c, NULL, NULL);
    p->num_params = np;
    p->params = precision == PREC_FP32 ? 0 : np * 2;  // the working copy
    p->master = np * 4;
    p->optimizer = np * 8;
    p->grads = np * 4;                                 // fp32 gradients in every precision
    double C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim, V = c->vocab_size;
    double qr = c->q_lora_rank, kvr = c->kv_lora_rank, rope = c->qk_rope_dim, nope = c->qk_nope_dim;
    double E = c->n_routed_experts, K = c->top_k, Im = c->moe_inter_dim, S = c->n_shared_experts, Id = c->inter_dim;
    int nb = c->n_layers + c->mtp_depth, n_moe = 0;
    for (int l = 0; l < nb; l++) n_moe += block_is_moe(c, l);
    int has_dense = c->n_dense_layers > 0 && c->n_layers > 0;
    double acts = 0.0, scratch = 0.0;
    for (int l = 0; l < nb; l++) {
        double a = 0.0, f = 0.0, in = 0.0, fixed = 0.0;
        f += 2 * C + 3 + (qr > 0) + H;  // x_in x_mid, rstds, lse
        a += 2 * H * dqk + kvr + rope + 2 * H * dv;  // q kf, kva, vf atto
        a += qr;                                                                          // qa
        if (!rc) a += C + qr + kvr + C;                                                   // ln1 qan ckvn ln2
        if (!block_is_moe(c, l)) {
            a += (rc ? 2 : 3) * Id;  // h1 h3 (g)
        } else {
            f += E + K;       // scores wts
            in += 3 * K;      // sel row_of perm
            fixed += (E + 1) * Iw + (B + 1) * E * F;  // expert_off aux_f
            a += 2 * K * C + (rc ? 2 : 3) * K * Im;   // xe ey eh1 eh3 (eg)
            if (S > 0) a += (rc ? 2 : 3) * S * Im;    // sh1 sh3 (sg)
        }
        acts += N * (a * A + f * F + in * Iw) + fixed;
    }
    acts += N * (C * F + C * A + F + 6 * Iw) + Iw;  // x_final lnf lnf_rstd, inputs targets pos, embedding plan
    if (c->mtp_depth > 0)  // emb x_out, en hn cat(2) ln, rstds, ids, embedding plan
        acts += N * (2 * C * F + 5 * C * A + 3 * F + 5 * Iw) + Iw;
    double logits = N * (V * A + F) * (c->mtp_depth > 0 ? 2 : 1);
    // scratch: buffers shared by all blocks
    double nm = n_moe > 0 ? n_moe : 1, E1 = E > 0 ? E : 1;
    scratch += (1 + nm * E1 + 3 * nm + nb * E1) * F;  // the statistics block
    double a = 0.0, f = 0.0, in = 0.0;
    if (rc) {
        a += 2 * C + kvr + qr;
        if (has_dense) a += Id;
        if (n_moe > 0) a += K * Im + S * Im;
    }
    a += H * (nope + dv);                                 // kv
    f += C;                                               // ffn_y
    f += 3 * C + H * dv + 2 * H * dqk + H * dv + (kvr + rope) + kvr + 2 * qr + H;  // dx dln1 dln2 datto dqf dkf dvf dkva dckvn dqan dqa att_scr
    a += H * (nope + dv);                                 // dkv
    if (precision != PREC_FP32) {                         // dconv
        double w = C;
        if (H * dqk > w) w = H * dqk;
        if (kvr + rope > w) w = kvr + rope;
        if (qr > w) w = qr;
        a += w;
    }
    if (has_dense) f += Id, a += 2 * Id;  // dg dh1 dh3
    if (n_moe > 0) {
        f += E + (precision != PREC_FP32 ? C : 0);  // router logits, fp32 router input
        if (S > 0) f += S * Im, a += 2 * S * Im;     // dsg dsh1 dsh3
        a += K * C + 2 * K * Im;                     // dey deh1 deh3
        f += K * Im + K * C + K + E + 2;             // deg dxe dwts dlogits stats_scr
        scratch += (B + 1) * F;                      // seg_scr
    }
    f += 1;                                          // ce_scr
    scratch += (4 + 1024) * F + 3 * Iw;              // loss, norm scratch, n_valid, flag
    if (c->mtp_depth > 0) f += 6 * C;                // dmx dcat den dhn demb
    scratch += N * (a * A + f * F + in * Iw);
    p->acts = (size_t)acts;
    p->logits = (size_t)logits;
    p->scratch = (size_t)scratch;
    p->workspace = (size_t)32 << 20;                  // cuBLAS(Lt) workspace, RMSNorm partial sums
    p->overhead = (size_t)400 << 20;                  // CUDA context, allocator slack (estimate)
    p->total = p->params + p->master + p->optimizer + p->grads + p->acts + p->logits + p->scratch + p->workspace +
               p->overhead;
    return 0;
}

// MiB with one decimal below 100 (tiny test configs), whole MiB above
static void mib(FILE *fp, const char *what, size_t bytes) {
    double v = (double)bytes / (1024.0 * 1024.0);
    fprintf(fp, v < 100.0 ? "%s %.1f MiB" : "%s %.0f MiB", what, v);
}

void cuda_plan_print(const CudaPlan *p, FILE *fp) {
    fprintf(fp, "memory plan: %.1fM params | ", (double)p->num_params / 1e6);
    mib(fp, "weights", p->params);
    mib(fp, ", master", p->master);
    mib(fp, ", AdamW", p->optimizer);
    mib(fp, ", grads", p->grads);
    mib(fp, ", activations", p->acts);
    mib(fp, ", logits", p->logits);
    mib(fp, ", scratch", p->scratch);
    mib(fp, ", workspace+context", p->workspace + p->overhead);
    fprintf(fp, " | total %.2f GiB\n", p->total / (1024.0 * 1024.0 * 1024.0));
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
