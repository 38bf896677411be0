// Causal scaled-dot-product attention through cuDNN's fused flash-attention engines, built
// with the cuDNN backend (graph) C API: tensors, operations, an operation graph, heuristics,
// an execution plan, a variant pack. The graphs are the op patterns NVIDIA's cudnn_frontend
// builds for its composite SDPA nodes (the patterns the fused engines recognise):
//
// forward (Q, K^T, V, scale -> O, Stats):
//   S = Q K^T; S *= scale; causal mask (gen_index rows / columns, row >= col, binary select
//   with -FLT_MAX); M = max_row S; E = exp(S - M); Z = sum_row E; Stats = M + log Z;
//   P = E / Z (stored in the I/O type); O = P V
// backward (Q, K^T, V^T, O, dO, Stats, scale -> dQ, dK, dV):
//   softmax_sum = sum_row(dO * O) * 1; S = scale Q K^T - Stats; causal mask; P = exp(S);
//   dV = P^T dO; dS = (dO V^T * 1 - softmax_sum) * P * scale; dK = dS^T Q;
//   dQ_accum (fp32) = dS K; dQ = identity(dQ_accum)
// "* 1" are the frontend's dropout-scale multiplications without dropout, kept because they
// are part of the recognised pattern. softmax_sum and dQ_accum are non-virtual fp32 tensors
// the caller provides (the frontend's workspace tensors): here device scratch of this file.
//
// Layouts: our (B, T, H, d) buffers are described as cuDNN's logical (B, H, T, d) by strides
// (b: T*H*d, h: d, t: H*d, 1); K^T and V^T are the same memory with the last two dims swapped.
// Stats is (B, H, T, 1) packed, i.e. exactly our lse (B, H, T) (the natural-log log-sum-exp of
// the scaled, masked scores of each row), so no conversion is needed in either direction.
//
// Everything is checked; any failure (no device, old cuDNN, a head size no engine takes,
// no engine for the graph, a failed execution) becomes a refusal with a reason and nothing
// is printed. Without MOE_WITH_CUDNN, and under the CUDA-on-CPU harness (cuDNN cannot run
// on host memory), the entry points refuse.
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "attention_cudnn.h"
#include "cuda_common.cuh"
#include "cuda_ops.h"

#if defined(MOE_WITH_CUDNN) && !defined(MOE_CUDA_HARNESS)
#define ATT_CUDNN 1
#include <cudnn.h>
#else
#define ATT_CUDNN 0
#endif

// acc += x, fp32 accumulation of a gradient of type T
template <typename T>
__global__ void accumulate_kernel(float *acc, const T *x, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) acc[i] += ldf(x[i]);
}

static char g_reason[384] = "not asked yet";
static void set_reason(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_reason, sizeof g_reason, fmt, ap);
    va_end(ap);
}

extern "C" {

void cu_accumulate_dt(float *acc, const void *x, long n, int dt) {
    if (n <= 0) return;
    DISPATCH_DT(dt, T, auto *kfn = accumulate_kernel<T>;
                LAUNCH(kfn, ceil_div(n, 256), 256, 0, 0, acc, (const T *)x, n));
}

const char *cu_cudnn_attention_reason(void) { return g_reason; }

}  // extern "C"

#if !ATT_CUDNN
// ---- no cuDNN in this build: every entry point refuses ------------------------------------------------------------
#if defined(MOE_CUDA_HARNESS)
#define ATT_CUDNN_ABSENT "CUDA-on-CPU harness (cuDNN runs only on a GPU)"
#else
#define ATT_CUDNN_ABSENT "built without cuDNN (cudnn.h / libcudnn.so not found by model/cuda/module.mk)"
#endif

extern "C" {

int cu_cudnn_attention_supported(int B, int T, int H, int dqk, int dv, int dt) {
    (void)B, (void)T, (void)H, (void)dqk, (void)dv, (void)dt;
    set_reason("%s", ATT_CUDNN_ABSENT);
    return 0;
}
int cu_cudnn_attention_forward(void *out, float *lse, const void *q, const void *k, const void *v, int B, int T,
                               int H, int dqk, int dv, float scale, int dt) {
    (void)out, (void)lse, (void)q, (void)k, (void)v, (void)B, (void)T, (void)H, (void)dqk, (void)dv, (void)scale,
        (void)dt;
    set_reason("%s", ATT_CUDNN_ABSENT);
    return -1;
}
int cu_cudnn_attention_backward(float *dq, float *dk, float *dv, const float *dout, const void *out, const float *lse,
                                const void *q, const void *k, const void *v, int B, int T, int H, int dqk, int dv_dim,
                                float scale, int dt) {
    (void)dq, (void)dk, (void)dv, (void)dout, (void)out, (void)lse, (void)q, (void)k, (void)v, (void)B, (void)T,
        (void)H, (void)dqk, (void)dv_dim, (void)scale, (void)dt;
    set_reason("%s", ATT_CUDNN_ABSENT);
    return -1;
}
size_t cu_cudnn_version(void) { return 0; }
int cu_cudnn_attention_check_graphs(int B, int T, int H, int dqk, int dv, int dt) {
    (void)B, (void)T, (void)H, (void)dqk, (void)dv, (void)dt;
    set_reason("%s", ATT_CUDNN_ABSENT);
    return -1;
}
void cu_cudnn_attention_release(void) {}

}  // extern "C"

#else
// ---- the cuDNN path ------------------------------------------------------------------------

// CUDNN_ATTR_OPERATIONGRAPH_HANDLE and CUDNN_ATTR_EXECUTION_PLAN_HANDLE are marked deprecated
// in recent headers (the handle may come from a device-property descriptor there) but cuDNN
// 9.0 needs them; their values are fixed by the ABI, used here so that -Werror stays quiet.
#define ATTR_OPGRAPH_HANDLE ((cudnnBackendAttributeName_t)800)
#define ATTR_PLAN_HANDLE ((cudnnBackendAttributeName_t)400)

#define MAX_OPS 40    // the backward graph has 23 operations
#define MAX_CFGS 32   // engine configurations tried per heuristics mode
#define CACHE_N 16    // shapes whose plans (or refusals) are kept

// uids of the non-virtual tensors of the variant packs
enum { FU_Q, FU_K, FU_V, FU_O, FU_STATS, FU_SCALE, FU_NEG, FU_N };
enum { BU_Q, BU_K, BU_V, BU_O, BU_DO, BU_STATS, BU_DQ, BU_DK, BU_DV, BU_SUM, BU_DQACC, BU_SCALE, BU_ONE, BU_NEG, BU_N };

typedef struct {
    cudnnBackendDescriptor_t plan;   // NULL: none
    cudnnBackendDescriptor_t *descs; // every descriptor the plan was built from, kept alive with it
    int ndescs;
    int64_t workspace;               // bytes
    int64_t uid[BU_N];
} Plan;

typedef struct {
    int used, ok;  // ok: both plans built (else refused, reason kept)
    int device, B, T, H, dqk, dv, dt;
    unsigned long stamp;
    Plan fwd, bwd;
    char reason[sizeof g_reason];
} Entry;

static Entry g_cache[CACHE_N];
static unsigned long g_clock;
static int g_dev_state;  // 0 not checked, 1 ready, -1 refused (g_dev_reason)
static char g_dev_reason[sizeof g_reason];
static int g_device = -1, g_cc;
static cudnnHandle_t g_handle;
static void *g_ws, *g_scr;  // cuDNN workspace, backward scratch (device)
static size_t g_ws_size, g_scr_size;

// ---- a graph under construction: every descriptor it creates, its operations, the first error ----
typedef struct {
    cudnnBackendDescriptor_t *d;
    int n, cap;
    cudnnBackendDescriptor_t ops[MAX_OPS];
    int nops;
    int64_t next_uid;
    cudnnStatus_t st;
    char where[160];
} Graph;

static void g_init(Graph *g) {
    memset(g, 0, sizeof *g);
    g->next_uid = 1;
    g->st = CUDNN_STATUS_SUCCESS;
}
static void destroy_all(cudnnBackendDescriptor_t *d, int n) {
    for (int i = n - 1; i >= 0; i--)
        if (d[i]) cudnnBackendDestroyDescriptor(d[i]);
}
static void g_free(Graph *g) {
    destroy_all(g->d, g->n);
    free(g->d);
    g->d = NULL, g->n = g->cap = 0;
}
static void g_fail(Graph *g, cudnnStatus_t s, const char *what, const char *step) {
    if (g->st != CUDNN_STATUS_SUCCESS) return;
    g->st = s;
    snprintf(g->where, sizeof g->where, "%s: %s", what, step);
}
static cudnnBackendDescriptor_t g_new(Graph *g, cudnnBackendDescriptorType_t type, const char *what) {
    if (g->st != CUDNN_STATUS_SUCCESS) return NULL;
    if (g->n == g->cap) {
        int cap = g->cap ? 2 * g->cap : 128;
        cudnnBackendDescriptor_t *d = (cudnnBackendDescriptor_t *)realloc(g->d, sizeof *d * (size_t)cap);
        if (!d) {
            g_fail(g, CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, what, "out of host memory");
            return NULL;
        }
        g->d = d, g->cap = cap;
    }
    cudnnBackendDescriptor_t desc = NULL;
    cudnnStatus_t s = cudnnBackendCreateDescriptor(type, &desc);
    if (s != CUDNN_STATUS_SUCCESS || !desc) {
        g_fail(g, s != CUDNN_STATUS_SUCCESS ? s : CUDNN_STATUS_INTERNAL_ERROR, what, "cudnnBackendCreateDescriptor");
        return NULL;
    }
    g->d[g->n++] = desc;
    return desc;
}
static void g_set(Graph *g, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                  cudnnBackendAttributeType_t type, int64_t count, const void *value, const char *what) {
    if (g->st != CUDNN_STATUS_SUCCESS) return;
    cudnnStatus_t s = cudnnBackendSetAttribute(d, name, type, count, value);
    if (s != CUDNN_STATUS_SUCCESS) {
        char step[48];
        snprintf(step, sizeof step, "cudnnBackendSetAttribute(%d)", (int)name);
        g_fail(g, s, what, step);
    }
}
static void g_fin(Graph *g, cudnnBackendDescriptor_t d, const char *what) {
    if (g->st != CUDNN_STATUS_SUCCESS) return;
    cudnnStatus_t s = cudnnBackendFinalize(d);
    if (s != CUDNN_STATUS_SUCCESS) g_fail(g, s, what, "cudnnBackendFinalize");
}
static void g_add_op(Graph *g, cudnnBackendDescriptor_t op, const char *what) {
    if (g->st != CUDNN_STATUS_SUCCESS) return;
    if (g->nops == MAX_OPS) {
        g_fail(g, CUDNN_STATUS_INTERNAL_ERROR, what, "too many operations");
        return;
    }
    g->ops[g->nops++] = op;
}

// a 4-d tensor; uid (may be NULL) receives its unique id
static cudnnBackendDescriptor_t g_tensor(Graph *g, const char *what, cudnnDataType_t type, const int64_t dim[4],
                                         const int64_t stride[4], int is_virtual, int by_value, int64_t *uid) {
    cudnnBackendDescriptor_t t = g_new(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR, what);
    int64_t id = g->next_uid++, align = 16;
    bool virt = is_virtual != 0, byval = by_value != 0;
    g_set(g, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &id, what);
    g_set(g, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, what);
    g_set(g, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dim, what);
    g_set(g, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, stride, what);
    g_set(g, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, what);
    g_set(g, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt, what);
    if (byval) g_set(g, t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &byval, what);
    g_fin(g, t, what);
    if (uid) *uid = id;
    return t;
}
static cudnnBackendDescriptor_t g_virtual(Graph *g, const char *what, cudnnDataType_t type, const int64_t dim[4],
                                          const int64_t stride[4]) {
    return g_tensor(g, what, type, dim, stride, 1, 0, NULL);
}

// y = mode(x[, b[, t]]); axis >= 0 only for GEN_INDEX
static void g_pointwise(Graph *g, const char *what, cudnnPointwiseMode_t mode, cudnnDataType_t prec, int64_t axis,
                        cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t,
                        cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t pw = g_new(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, what);
    g_set(g, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, what);
    g_set(g, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, what);
    if (axis >= 0) g_set(g, pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, what);
    g_fin(g, pw, what);
    cudnnBackendDescriptor_t op = g_new(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, what);
    g_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw, what);
    g_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, what);
    if (b) g_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, what);
    if (t) g_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t, what);
    g_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, what);
    g_fin(g, op, what);
    g_add_op(g, op, what);
}
// c = a b (batched over the first two dims), fp32 accumulation
static void g_matmul(Graph *g, const char *what, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                     cudnnBackendDescriptor_t c) {
    cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t md = g_new(g, CUDNN_BACKEND_MATMUL_DESCRIPTOR, what);
    g_set(g, md, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32, what);
    g_fin(g, md, what);
    cudnnBackendDescriptor_t op = g_new(g, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, what);
    g_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a, what);
    g_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, what);
    g_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c, what);
    g_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &md, what);
    g_fin(g, op, what);
    g_add_op(g, op, what);
}
// y = reduce(x) over the dims where y has size 1, fp32
static void g_reduction(Graph *g, const char *what, cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x,
                        cudnnBackendDescriptor_t y) {
    cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t rd = g_new(g, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, what);
    g_set(g, rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode, what);
    g_set(g, rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32, what);
    g_fin(g, rd, what);
    cudnnBackendDescriptor_t op = g_new(g, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, what);
    g_set(g, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, what);
    g_set(g, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, what);
    g_set(g, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd, what);
    g_fin(g, op, what);
    g_add_op(g, op, what);
}
// y = x seen through other dims / strides (a transpose without data movement)
static void g_reshape(Graph *g, const char *what, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t op = g_new(g, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, what);
    g_set(g, op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, what);
    g_set(g, op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, what);
    g_fin(g, op, what);
    g_add_op(g, op, what);
}

// The causal mask of NVIDIA's frontend: rows (axis 2) and columns (axis 3) as int32 indices,
// keep row >= col, elsewhere the by-value mask value. idx_prec: the math precision of the
// index generation (the frontend has emitted both fp32 and int32 over its versions).
static cudnnBackendDescriptor_t g_causal(Graph *g, cudnnBackendDescriptor_t s, cudnnBackendDescriptor_t neg,
                                         const int64_t s_dim[4], const int64_t s_str[4], cudnnDataType_t idx_prec) {
    cudnnBackendDescriptor_t row = g_virtual(g, "causal row index", CUDNN_DATA_INT32, s_dim, s_str);
    g_pointwise(g, "causal row index", CUDNN_POINTWISE_GEN_INDEX, idx_prec, 2, s, NULL, NULL, row);
    cudnnBackendDescriptor_t col = g_virtual(g, "causal column index", CUDNN_DATA_INT32, s_dim, s_str);
    g_pointwise(g, "causal column index", CUDNN_POINTWISE_GEN_INDEX, idx_prec, 3, s, NULL, NULL, col);
    cudnnBackendDescriptor_t keep = g_virtual(g, "causal row >= col", CUDNN_DATA_BOOLEAN, s_dim, s_str);
    g_pointwise(g, "causal row >= col", CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, -1, row, col, NULL, keep);
    cudnnBackendDescriptor_t out = g_virtual(g, "causal select", CUDNN_DATA_FLOAT, s_dim, s_str);
    g_pointwise(g, "causal select", CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, -1, s, neg, keep, out);
    return out;
}

// tensor shapes of one problem
typedef struct {
    int64_t q_dim[4], q_str[4];    // Q, K, dQ, dK: (B, H, T, dqk) over (B, T, H, dqk) memory
    int64_t kt_dim[4], kt_str[4];  // K^T: (B, H, dqk, T)
    int64_t v_dim[4], v_str[4];    // V, O, dO, dV: (B, H, T, dv)
    int64_t vt_dim[4], vt_str[4];  // V^T: (B, H, dv, T)
    int64_t s_dim[4], s_str[4];    // scores (B, H, T, T), row-major
    int64_t st_str[4];             // the transposed scores (P^T, dS^T)
    int64_t r_dim[4], r_str[4];    // per-row statistics (B, H, T, 1), packed
    int64_t acc_dim[4], acc_str[4];// dQ_accum (B, H, T, dqk), packed
    int64_t dov_str[4];            // the virtual dO * O (the frontend's strides)
    int64_t one_dim[4], one_str[4];// by-value scalars
} Shapes;

static void shapes(Shapes *s, int B, int T, int H, int dqk, int dv) {
    int64_t b = B, t = T, h = H, dq = dqk, dvv = dv;
    int64_t v[][4] = {
        {b, h, t, dq},   {t * h * dq, dq, h * dq, 1},  {b, h, dq, t}, {t * h * dq, dq, 1, h * dq},
        {b, h, t, dvv},  {t * h * dvv, dvv, h * dvv, 1}, {b, h, dvv, t}, {t * h * dvv, dvv, 1, h * dvv},
        {b, h, t, t},    {h * t * t, t * t, t, 1},     {h * t * t, t * t, 1, t},
        {b, h, t, 1},    {h * t, t, 1, 1},             {b, h, t, dq}, {h * t * dq, t * dq, dq, 1},
        {h * t * dvv, t * dvv, h * dvv, 1},            {1, 1, 1, 1},  {1, 1, 1, 1},
    };
    int64_t *dst[] = {s->q_dim, s->q_str, s->kt_dim, s->kt_str, s->v_dim, s->v_str, s->vt_dim, s->vt_str,
                      s->s_dim, s->s_str, s->st_str, s->r_dim, s->r_str, s->acc_dim, s->acc_str, s->dov_str,
                      s->one_dim, s->one_str};
    for (size_t i = 0; i < sizeof dst / sizeof dst[0]; i++) memcpy(dst[i], v[i], sizeof v[i]);
}

// the operation graph of g, heuristics (mode A, then the fallback list), the first engine
// configuration whose execution plan finalises. 0 with p filled (p owns g's descriptors), -1
// with a reason in why (g freed either way). check_only: stop after the operation graph
// (finalised without a handle when there is none) and free everything.
static int make_plan(Graph *g, Plan *p, char *why, size_t why_len, int check_only) {
    cudnnBackendDescriptor_t og = g_new(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    g_set(g, og, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g->nops, g->ops, "operation graph");
    if (g_handle) g_set(g, og, ATTR_OPGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_handle, "operation graph");
    g_fin(g, og, "operation graph");
    if (g->st != CUDNN_STATUS_SUCCESS) {
        char msg[160] = "";
        cudnnGetLastErrorString(msg, sizeof msg);
        snprintf(why, why_len, "%s failed (%s)%s%s", g->where, cudnnGetErrorString(g->st), msg[0] ? "; " : "", msg);
        g_free(g);
        return -1;
    }
    if (check_only) {
        snprintf(why, why_len, "%d operations, %d descriptors finalised", g->nops, g->n);
        g_free(g);
        return 0;
    }
    static const cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
    cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
    const char *last_step = "no engine configuration";
    int tried = 0;
    for (int m = 0; m < 2; m++) {
        cudnnBackendDescriptor_t heur = NULL;
        cudnnStatus_t s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur);
        if (s != CUDNN_STATUS_SUCCESS || !heur) {
            last = s, last_step = "heuristics descriptor";
            continue;
        }
        cudnnBackendHeurMode_t mode = modes[m];
        s = cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &og);
        if (s == CUDNN_STATUS_SUCCESS)
            s = cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
        if (s == CUDNN_STATUS_SUCCESS) s = cudnnBackendFinalize(heur);
        int64_t count = 0;
        if (s == CUDNN_STATUS_SUCCESS)
            s = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count,
                                         NULL);
        if (s != CUDNN_STATUS_SUCCESS) {
            last = s, last_step = "heuristics";
            cudnnBackendDestroyDescriptor(heur);
            continue;
        }
        if (count > MAX_CFGS) count = MAX_CFGS;
        cudnnBackendDescriptor_t cfg[MAX_CFGS];
        int ncfg = 0;
        for (; ncfg < count; ncfg++) {
            cfg[ncfg] = NULL;
            s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfg[ncfg]);
            if (s != CUDNN_STATUS_SUCCESS || !cfg[ncfg]) break;
        }
        int64_t got = 0;
        if (ncfg > 0) {
            s = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, ncfg, &got,
                                         cfg);
            if (s != CUDNN_STATUS_SUCCESS) last = s, last_step = "heuristics results", got = 0;
        } else if (count == 0) {
            last_step = "the heuristics proposed no engine configuration";
        }
        if (got > ncfg) got = ncfg;
        int chosen = -1;
        cudnnBackendDescriptor_t plan = NULL;
        for (int i = 0; i < got && chosen < 0; i++) {
            tried++;
            plan = NULL;
            s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan);
            if (s != CUDNN_STATUS_SUCCESS || !plan) {
                last = s, last_step = "execution plan descriptor";
                plan = NULL;
                continue;
            }
            s = cudnnBackendSetAttribute(plan, ATTR_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_handle);
            if (s == CUDNN_STATUS_SUCCESS)
                s = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                             CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg[i]);
            if (s == CUDNN_STATUS_SUCCESS) s = cudnnBackendFinalize(plan);
            int64_t ws = 0;
            if (s == CUDNN_STATUS_SUCCESS)
                s = cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                             NULL, &ws);
            if (s == CUDNN_STATUS_SUCCESS && ws >= 0) {
                chosen = i;
                p->workspace = ws;
            } else {
                last = s != CUDNN_STATUS_SUCCESS ? s : CUDNN_STATUS_INTERNAL_ERROR, last_step = "execution plan";
                cudnnBackendDestroyDescriptor(plan);
                plan = NULL;
            }
        }
        if (chosen >= 0) {
            // keep the heuristics, the chosen configuration and the plan with the graph's descriptors
            cudnnBackendDescriptor_t keep[3] = {heur, cfg[chosen], plan};
            int ok = 1;
            for (int i = 0; i < 3 && ok; i++) {
                if (g->n == g->cap) {
                    cudnnBackendDescriptor_t *d =
                        (cudnnBackendDescriptor_t *)realloc(g->d, sizeof *d * (size_t)(g->cap + 8));
                    if (!d) ok = 0;
                    else g->d = d, g->cap += 8;
                }
                if (ok) g->d[g->n++] = keep[i], keep[i] = NULL;
            }
            for (int i = 0; i < ncfg; i++)
                if (i != chosen) cudnnBackendDestroyDescriptor(cfg[i]);
            if (!ok) {  // out of host memory: give up cleanly
                for (int i = 2; i >= 0; i--)
                    if (keep[i]) cudnnBackendDestroyDescriptor(keep[i]);
                g_free(g);
                snprintf(why, why_len, "out of host memory");
                return -1;
            }
            p->plan = plan;
            p->descs = g->d, p->ndescs = g->n;
            g->d = NULL, g->n = g->cap = 0;
            return 0;
        }
        for (int i = 0; i < ncfg; i++) cudnnBackendDestroyDescriptor(cfg[i]);
        cudnnBackendDestroyDescriptor(heur);
    }
    char msg[256] = "";
    cudnnGetLastErrorString(msg, sizeof msg);
    snprintf(why, why_len, "no cuDNN engine for the graph (%d configurations tried; %s: %s)%s%s", tried, last_step,
             cudnnGetErrorString(last), msg[0] ? "; " : "", msg);
    g_free(g);
    return -1;
}

static int build_forward(Plan *p, const Shapes *s, cudnnDataType_t io, cudnnDataType_t idx_prec, char *why,
                         size_t why_len, int check_only) {
    const cudnnDataType_t F = CUDNN_DATA_FLOAT;
    const cudnnPointwiseMode_t MUL = CUDNN_POINTWISE_MUL;
    Graph g;
    g_init(&g);
    cudnnBackendDescriptor_t Q = g_tensor(&g, "Q", io, s->q_dim, s->q_str, 0, 0, &p->uid[FU_Q]);
    cudnnBackendDescriptor_t KT = g_tensor(&g, "K^T", io, s->kt_dim, s->kt_str, 0, 0, &p->uid[FU_K]);
    cudnnBackendDescriptor_t V = g_tensor(&g, "V", io, s->v_dim, s->v_str, 0, 0, &p->uid[FU_V]);
    cudnnBackendDescriptor_t O = g_tensor(&g, "O", io, s->v_dim, s->v_str, 0, 0, &p->uid[FU_O]);
    cudnnBackendDescriptor_t ST = g_tensor(&g, "Stats", F, s->r_dim, s->r_str, 0, 0, &p->uid[FU_STATS]);
    cudnnBackendDescriptor_t SC = g_tensor(&g, "scale", F, s->one_dim, s->one_str, 0, 1, &p->uid[FU_SCALE]);
    cudnnBackendDescriptor_t NEG = g_tensor(&g, "mask value", F, s->one_dim, s->one_str, 0, 1, &p->uid[FU_NEG]);

    cudnnBackendDescriptor_t S1 = g_virtual(&g, "Q K^T", F, s->s_dim, s->s_str);
    g_matmul(&g, "Q K^T", Q, KT, S1);
    cudnnBackendDescriptor_t S2 = g_virtual(&g, "scaled scores", F, s->s_dim, s->s_str);
    g_pointwise(&g, "scaled scores", MUL, F, -1, S1, SC, NULL, S2);
    cudnnBackendDescriptor_t S3 = g_causal(&g, S2, NEG, s->s_dim, s->s_str, idx_prec);
    // softmax with stats
    cudnnBackendDescriptor_t M = g_virtual(&g, "row max", F, s->r_dim, s->r_str);
    g_reduction(&g, "row max", CUDNN_REDUCE_TENSOR_MAX, S3, M);
    cudnnBackendDescriptor_t S4 = g_virtual(&g, "scores - max", F, s->s_dim, s->s_str);
    g_pointwise(&g, "scores - max", CUDNN_POINTWISE_SUB, F, -1, S3, M, NULL, S4);
    cudnnBackendDescriptor_t E = g_virtual(&g, "exp", F, s->s_dim, s->s_str);
    g_pointwise(&g, "exp", CUDNN_POINTWISE_EXP, F, -1, S4, NULL, NULL, E);
    cudnnBackendDescriptor_t Z = g_virtual(&g, "row sum", F, s->r_dim, s->r_str);
    g_reduction(&g, "row sum", CUDNN_REDUCE_TENSOR_ADD, E, Z);
    cudnnBackendDescriptor_t LZ = g_virtual(&g, "log row sum", F, s->r_dim, s->r_str);
    g_pointwise(&g, "log row sum", CUDNN_POINTWISE_LOG, F, -1, Z, NULL, NULL, LZ);
    g_pointwise(&g, "stats", CUDNN_POINTWISE_ADD, F, -1, M, LZ, NULL, ST);
    cudnnBackendDescriptor_t P = g_virtual(&g, "softmax", io, s->s_dim, s->s_str);  // the I/O type: bmm2's A
    g_pointwise(&g, "softmax", CUDNN_POINTWISE_DIV, F, -1, E, Z, NULL, P);
    g_matmul(&g, "P V", P, V, O);
    return make_plan(&g, p, why, why_len, check_only);
}

static int build_backward(Plan *p, const Shapes *s, cudnnDataType_t io, cudnnDataType_t idx_prec, char *why,
                          size_t why_len, int check_only) {
    const cudnnDataType_t F = CUDNN_DATA_FLOAT;
    const cudnnPointwiseMode_t MUL = CUDNN_POINTWISE_MUL;
    Graph g;
    g_init(&g);
    cudnnBackendDescriptor_t Q = g_tensor(&g, "Q", io, s->q_dim, s->q_str, 0, 0, &p->uid[BU_Q]);
    cudnnBackendDescriptor_t KT = g_tensor(&g, "K^T", io, s->kt_dim, s->kt_str, 0, 0, &p->uid[BU_K]);
    cudnnBackendDescriptor_t VT = g_tensor(&g, "V^T", io, s->vt_dim, s->vt_str, 0, 0, &p->uid[BU_V]);
    cudnnBackendDescriptor_t O = g_tensor(&g, "O", io, s->v_dim, s->v_str, 0, 0, &p->uid[BU_O]);
    cudnnBackendDescriptor_t dO = g_tensor(&g, "dO", io, s->v_dim, s->v_str, 0, 0, &p->uid[BU_DO]);
    cudnnBackendDescriptor_t ST = g_tensor(&g, "Stats", F, s->r_dim, s->r_str, 0, 0, &p->uid[BU_STATS]);
    cudnnBackendDescriptor_t dQ = g_tensor(&g, "dQ", io, s->q_dim, s->q_str, 0, 0, &p->uid[BU_DQ]);
    cudnnBackendDescriptor_t dK = g_tensor(&g, "dK", io, s->q_dim, s->q_str, 0, 0, &p->uid[BU_DK]);
    cudnnBackendDescriptor_t dV = g_tensor(&g, "dV", io, s->v_dim, s->v_str, 0, 0, &p->uid[BU_DV]);
    cudnnBackendDescriptor_t SUM = g_tensor(&g, "softmax_sum", F, s->r_dim, s->r_str, 0, 0, &p->uid[BU_SUM]);
    cudnnBackendDescriptor_t DQA = g_tensor(&g, "dQ_accum", F, s->acc_dim, s->acc_str, 0, 0, &p->uid[BU_DQACC]);
    cudnnBackendDescriptor_t SC = g_tensor(&g, "scale", F, s->one_dim, s->one_str, 0, 1, &p->uid[BU_SCALE]);
    cudnnBackendDescriptor_t ONE = g_tensor(&g, "one", F, s->one_dim, s->one_str, 0, 1, &p->uid[BU_ONE]);
    cudnnBackendDescriptor_t NEG = g_tensor(&g, "mask value", F, s->one_dim, s->one_str, 0, 1, &p->uid[BU_NEG]);

    // softmax_sum = rowsum(dO * O) * 1
    cudnnBackendDescriptor_t DOO = g_virtual(&g, "dO * O", F, s->v_dim, s->dov_str);
    g_pointwise(&g, "dO * O", MUL, F, -1, dO, O, NULL, DOO);
    cudnnBackendDescriptor_t RS = g_virtual(&g, "rowsum(dO * O)", F, s->r_dim, s->r_str);
    g_reduction(&g, "rowsum(dO * O)", CUDNN_REDUCE_TENSOR_ADD, DOO, RS);
    g_pointwise(&g, "softmax_sum", MUL, F, -1, RS, ONE, NULL, SUM);
    // P = exp(mask(scale Q K^T - Stats))
    cudnnBackendDescriptor_t S1 = g_virtual(&g, "Q K^T", F, s->s_dim, s->s_str);
    g_matmul(&g, "Q K^T", Q, KT, S1);
    cudnnBackendDescriptor_t S2 = g_virtual(&g, "scaled scores", F, s->s_dim, s->s_str);
    g_pointwise(&g, "scaled scores", MUL, F, -1, S1, SC, NULL, S2);
    cudnnBackendDescriptor_t S3 = g_virtual(&g, "scores - stats", F, s->s_dim, s->s_str);
    g_pointwise(&g, "scores - stats", CUDNN_POINTWISE_SUB, F, -1, S2, ST, NULL, S3);
    cudnnBackendDescriptor_t S4 = g_causal(&g, S3, NEG, s->s_dim, s->s_str, idx_prec);
    cudnnBackendDescriptor_t P = g_virtual(&g, "P", F, s->s_dim, s->s_str);
    g_pointwise(&g, "P", CUDNN_POINTWISE_EXP, F, -1, S4, NULL, NULL, P);
    // dV = P^T dO
    cudnnBackendDescriptor_t PT = g_virtual(&g, "P^T", io, s->s_dim, s->st_str);
    g_reshape(&g, "P^T", P, PT);
    g_matmul(&g, "P^T dO", PT, dO, dV);
    // dS = (dO V^T * 1 - softmax_sum) * P * scale
    cudnnBackendDescriptor_t DP = g_virtual(&g, "dO V^T", F, s->s_dim, s->s_str);
    g_matmul(&g, "dO V^T", dO, VT, DP);
    cudnnBackendDescriptor_t DP2 = g_virtual(&g, "dP * 1", F, s->s_dim, s->s_str);
    g_pointwise(&g, "dP * 1", MUL, F, -1, DP, ONE, NULL, DP2);
    cudnnBackendDescriptor_t DP3 = g_virtual(&g, "dP - softmax_sum", F, s->s_dim, s->s_str);
    g_pointwise(&g, "dP - softmax_sum", CUDNN_POINTWISE_SUB, F, -1, DP2, SUM, NULL, DP3);
    cudnnBackendDescriptor_t DS = g_virtual(&g, "dS", F, s->s_dim, s->s_str);
    g_pointwise(&g, "dS", MUL, F, -1, DP3, P, NULL, DS);
    cudnnBackendDescriptor_t DS2 = g_virtual(&g, "scaled dS", F, s->s_dim, s->s_str);
    g_pointwise(&g, "scaled dS", MUL, F, -1, DS, SC, NULL, DS2);
    // dK = dS^T Q
    cudnnBackendDescriptor_t DST = g_virtual(&g, "dS^T", io, s->s_dim, s->st_str);
    g_reshape(&g, "dS^T", DS2, DST);
    g_matmul(&g, "dS^T Q", DST, Q, dK);
    // dQ = identity(dQ_accum = dS K)
    cudnnBackendDescriptor_t KR = g_virtual(&g, "K", F, s->q_dim, s->q_str);
    g_reshape(&g, "K", KT, KR);
    g_matmul(&g, "dS K", DS2, KR, DQA);
    g_pointwise(&g, "dQ", CUDNN_POINTWISE_IDENTITY, F, -1, DQA, NULL, NULL, dQ);
    return make_plan(&g, p, why, why_len, check_only);
}

static void plan_free(Plan *p) {
    if (p->descs) destroy_all(p->descs, p->ndescs);  // the plan is the last descriptor: destroyed first
    free(p->descs);
    memset(p, 0, sizeof *p);
}

// The limits NVIDIA's frontend checks before it builds these graphs (cudnn_frontend
// sdpa_support_surface.h, causal, no bias / dropout / padding, fixed lengths): a case the
// backend might accept but compute wrongly is refused here. NULL when none applies.
static const char *frontend_limits(size_t ver, int cc, int T, int dqk, int dv, char *buf, size_t len) {
    int major = cc / 10;
    if (ver == 91000 || ver == 91001) return "cuDNN 9.10.0 / 9.10.1 have known SDPA bugs (9.10.2+ needed)";
    if (cc < 80) {
        snprintf(buf, len, "cuDNN flash attention needs compute capability 8.0+ (device: %d.%d)", cc / 10, cc % 10);
        return buf;
    }
    if (dqk % 8 || dv % 8) return "cuDNN flash attention needs head sizes that are multiples of 8";
    if (dqk > 256 || dv > 256) return "cuDNN flash attention takes head sizes up to 256";
    if (T < 2) return "T = 1 (s_q = s_kv = 1) is not supported by the cuDNN backward";
    // forward
    if (major == 8 && ver <= 90900 && (dqk > 128 || dv > 128))
        return "head sizes above 128 need cuDNN 9.10+ on compute capability 8.x (forward)";
    if (major == 10 && ver < 90900 && (dqk > 128 || dv > 128))
        return "head sizes above 128 need cuDNN 9.9+ on compute capability 10.x (forward)";
    // backward
    if (major == 9) {
        if (ver >= 91100 && ver < 91300 && dqk > 128 && dqk <= 192 && dv > 64 && dv <= 128 && dv != 128 &&
            dqk != 192)
            return "cuDNN 9.11 / 9.12 backward takes dqk in (128, 192] only with dqk 192 or dv 128";
    } else if (major == 10 && ver >= 91100) {
        if (dqk == 192) {
            if (dv != 128) return "the cuDNN backward takes dqk 192 only with dv 128 on compute capability 10.x";
        } else if (!(ver >= 92300 && dqk == 256 && dv == 256) && (dqk > 128 || dv > 128)) {
            return "the cuDNN backward takes head sizes up to 128 on compute capability 10.x (192/128, 256/256 "
                   "excepted)";
        }
    } else if (dqk > 128 || dv > 128) {
        snprintf(buf, len, "the cuDNN backward takes head sizes up to 128 on compute capability %d.%d", cc / 10,
                 cc % 10);
        return buf;
    }
    return NULL;
}

// device, cuDNN library and handle: checked once
static int device_ready(void) {
    if (g_dev_state) {
        if (g_dev_state < 0) set_reason("%s", g_dev_reason);
        return g_dev_state > 0;
    }
    g_dev_state = -1;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n < 1) {
        snprintf(g_dev_reason, sizeof g_dev_reason, "no CUDA device (cudaGetDeviceCount: %s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        (void)cudaGetLastError();  // not sticky: clear it for the kernels that follow
        set_reason("%s", g_dev_reason);
        return 0;
    }
    int major = 0, minor = 0;
    if (cudaGetDevice(&g_device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, g_device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, g_device) != cudaSuccess) {
        snprintf(g_dev_reason, sizeof g_dev_reason, "cannot query the CUDA device (%s)",
                 cudaGetErrorString(cudaGetLastError()));
        set_reason("%s", g_dev_reason);
        return 0;
    }
    g_cc = major * 10 + minor;
    size_t ver = cudnnGetVersion();
    if (ver < 90000 || ver / 10000 != CUDNN_MAJOR) {
        snprintf(g_dev_reason, sizeof g_dev_reason, "cuDNN %zu loaded, built for %d.x (9.0+ needed)", ver,
                 CUDNN_MAJOR);
        set_reason("%s", g_dev_reason);
        return 0;
    }
    cudnnStatus_t s = cudnnCreate(&g_handle);
    if (s != CUDNN_STATUS_SUCCESS) {
        g_handle = NULL;
        snprintf(g_dev_reason, sizeof g_dev_reason, "cudnnCreate failed (%s)", cudnnGetErrorString(s));
        (void)cudaGetLastError();
        set_reason("%s", g_dev_reason);
        return 0;
    }
    g_dev_state = 1;
    return 1;
}

// The cache entry of a shape: plans built on first use; NULL (reason set) for invalid
// arguments or an unusable device. entry->ok says whether cuDNN took the shape.
static Entry *get_entry(int B, int T, int H, int dqk, int dv, int dt) {
    if (dt == CU_F32) {
        set_reason("fp32 is not supported by cuDNN's flash attention (bf16 / fp16 only)");
        return NULL;
    }
    if (dt != CU_BF16 && dt != CU_F16) {
        set_reason("unknown element type %d", dt);
        return NULL;
    }
    if (B < 1 || T < 1 || H < 1 || dqk < 1 || dv < 1) {
        set_reason("invalid sizes B %d T %d H %d dqk %d dv %d", B, T, H, dqk, dv);
        return NULL;
    }
    if (!device_ready()) return NULL;
    int dev = -1;
    if (cudaGetDevice(&dev) != cudaSuccess || dev != g_device) {
        (void)cudaGetLastError();
        set_reason("the cuDNN path is set up for device %d (current device %d)", g_device, dev);
        return NULL;
    }
    Entry *e = NULL, *victim = &g_cache[0];
    for (int i = 0; i < CACHE_N && !e; i++) {
        Entry *c = &g_cache[i];
        if (c->used && c->device == dev && c->B == B && c->T == T && c->H == H && c->dqk == dqk && c->dv == dv &&
            c->dt == dt)
            e = c;
        else if (!c->used || (victim->used && c->stamp < victim->stamp))
            victim = c;
    }
    if (e) {
        e->stamp = ++g_clock;
        set_reason("%s", e->reason);
        return e;
    }
    e = victim;
    if (e->used) plan_free(&e->fwd), plan_free(&e->bwd);
    memset(e, 0, sizeof *e);
    e->used = 1, e->device = dev, e->B = B, e->T = T, e->H = H, e->dqk = dqk, e->dv = dv, e->dt = dt;
    e->stamp = ++g_clock;
    size_t ver = cudnnGetVersion();
    char buf[160];
    const char *lim = frontend_limits(ver, g_cc, T, dqk, dv, buf, sizeof buf);
    if (lim) {
        snprintf(e->reason, sizeof e->reason, "%s", lim);
    } else {
        Shapes s;
        shapes(&s, B, T, H, dqk, dv);
        cudnnDataType_t io = dt == CU_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
        char why[sizeof e->reason - 64];
        // the mask's index generation in fp32 (current frontend), else in int32 (older frontend)
        static const cudnnDataType_t idx[2] = {CUDNN_DATA_FLOAT, CUDNN_DATA_INT32};
        int ok = 0;
        const char *which = "forward";
        for (int v = 0; v < 2 && !ok; v++) {
            plan_free(&e->fwd), plan_free(&e->bwd);
            which = "forward";
            if (build_forward(&e->fwd, &s, io, idx[v], why, sizeof why, 0) < 0) continue;
            which = "backward";
            if (build_backward(&e->bwd, &s, io, idx[v], why, sizeof why, 0) < 0) continue;
            ok = 1;
        }
        (void)cudaGetLastError();  // a failed engine probe may leave a (non-sticky) error behind
        if (ok) {
            e->ok = 1;
            snprintf(e->reason, sizeof e->reason, "ok (cuDNN %zu)", ver);
        } else {
            plan_free(&e->fwd), plan_free(&e->bwd);
            snprintf(e->reason, sizeof e->reason, "%s: %s", which, why);
        }
    }
    set_reason("%s", e->reason);
    return e;
}

// device buffer *p of at least bytes (grown, never shrunk); -1 when cudaMalloc fails
static int ensure(void **p, size_t *size, size_t bytes) {
    if (bytes <= *size) return 0;
    if (*p) cudaFree(*p);  // synchronises: no pending work still reads the old buffer
    *p = NULL, *size = 0;
    if (cudaMalloc(p, bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        *p = NULL;
        set_reason("cudaMalloc of %zu bytes for the cuDNN path failed", bytes);
        return -1;
    }
    *size = bytes;
    return 0;
}

static int execute(const Plan *p, void *const *ptrs, int n, const char *what) {
    cudnnBackendDescriptor_t vp = NULL;
    cudnnStatus_t s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, p->uid);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &g_ws);
    if (s == CUDNN_STATUS_SUCCESS) s = cudnnBackendFinalize(vp);
    if (s == CUDNN_STATUS_SUCCESS) s = cudnnBackendExecute(g_handle, p->plan, vp);
    if (vp) cudnnBackendDestroyDescriptor(vp);
    if (s != CUDNN_STATUS_SUCCESS) {
        char msg[192] = "";
        cudnnGetLastErrorString(msg, sizeof msg);
        set_reason("cudnnBackendExecute (%s) failed: %s%s%s", what, cudnnGetErrorString(s), msg[0] ? "; " : "", msg);
        (void)cudaGetLastError();
        return -1;
    }
    return 0;
}

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

// refuse (rather than let cuDNN fail or misread) a NULL pointer, or a misaligned one among the
// first n_aligned (the buffers cuDNN reads or writes are declared 16-byte aligned)
static int check_ptrs(const void *const *p, int n, int n_aligned, const char *what) {
    for (int i = 0; i < n; i++)
        if (!p[i] || (i < n_aligned && (uintptr_t)p[i] % 16)) {
            set_reason("%s: pointer argument %d is %s", what, i + 1, p[i] ? "not 16-byte aligned" : "NULL");
            return -1;
        }
    return 0;
}

extern "C" {

size_t cu_cudnn_version(void) { return cudnnGetVersion(); }

int cu_cudnn_attention_supported(int B, int T, int H, int dqk, int dv, int dt) {
    Entry *e = get_entry(B, T, H, dqk, dv, dt);
    return e && e->ok;
}

int cu_cudnn_attention_forward(void *out, float *lse, const void *q, const void *k, const void *v, int B, int T,
                               int H, int dqk, int dv, float scale, int dt) {
    Entry *e = get_entry(B, T, H, dqk, dv, dt);
    if (!e || !e->ok) return -1;
    const void *args[5] = {out, lse, q, k, v};
    if (check_ptrs(args, 5, 5, "cu_cudnn_attention_forward") < 0) return -1;
    if (ensure(&g_ws, &g_ws_size, (size_t)e->fwd.workspace) < 0) return -1;
    float neg = -FLT_MAX;
    void *ptrs[FU_N];
    ptrs[FU_Q] = (void *)q, ptrs[FU_K] = (void *)k, ptrs[FU_V] = (void *)v, ptrs[FU_O] = out;
    ptrs[FU_STATS] = lse, ptrs[FU_SCALE] = &scale, ptrs[FU_NEG] = &neg;  // by value: host pointers
    return execute(&e->fwd, ptrs, FU_N, "forward");
}

int cu_cudnn_attention_backward(float *dq, float *dk, float *dv, const float *dout, const void *out, const float *lse,
                                const void *q, const void *k, const void *v, int B, int T, int H, int dqk, int dv_dim,
                                float scale, int dt) {
    Entry *e = get_entry(B, T, H, dqk, dv_dim, dt);
    if (!e || !e->ok) return -1;
    const void *args[9] = {out, lse, q, k, v, dq, dk, dv, dout};  // cuDNN reads the first five
    if (check_ptrs(args, 9, 5, "cu_cudnn_attention_backward") < 0) return -1;
    long nq = (long)B * T * H * dqk, nv = (long)B * T * H * dv_dim, nr = (long)B * H * T;
    size_t es = cu_dtype_size(dt);
    // scratch: dO, dQ, dK, dV (type dt, our layouts), softmax_sum (B, H, T), dQ_accum (B, H, T, dqk)
    size_t o_do = 0, o_dq = o_do + align256(es * nv), o_dk = o_dq + align256(es * nq), o_dv = o_dk + align256(es * nq);
    size_t o_sum = o_dv + align256(es * nv), o_acc = o_sum + align256(sizeof(float) * nr);
    size_t total = o_acc + align256(sizeof(float) * (size_t)nr * dqk);
    if (ensure(&g_scr, &g_scr_size, total) < 0 || ensure(&g_ws, &g_ws_size, (size_t)e->bwd.workspace) < 0) return -1;
    char *scr = (char *)g_scr;
    void *d_o = scr + o_do, *d_q = scr + o_dq, *d_k = scr + o_dk, *d_v = scr + o_dv;
    cu_convert(d_o, dt, dout, CU_F32, nv);
    // dQ_accum is accumulated into: zero it (cuDNN before 9.6 needs it; harmless after)
    if (cudaMemsetAsync(scr + o_acc, 0, sizeof(float) * (size_t)nr * dqk, 0) != cudaSuccess) {
        set_reason("cudaMemsetAsync failed (%s)", cudaGetErrorString(cudaGetLastError()));
        return -1;
    }
    float one = 1.0f, neg = -FLT_MAX;
    void *ptrs[BU_N];
    ptrs[BU_Q] = (void *)q, ptrs[BU_K] = (void *)k, ptrs[BU_V] = (void *)v, ptrs[BU_O] = (void *)out;
    ptrs[BU_DO] = d_o, ptrs[BU_STATS] = (void *)lse, ptrs[BU_DQ] = d_q, ptrs[BU_DK] = d_k, ptrs[BU_DV] = d_v;
    ptrs[BU_SUM] = scr + o_sum, ptrs[BU_DQACC] = scr + o_acc;
    ptrs[BU_SCALE] = &scale, ptrs[BU_ONE] = &one, ptrs[BU_NEG] = &neg;  // by value: host pointers
    if (execute(&e->bwd, ptrs, BU_N, "backward") < 0) return -1;
    cu_accumulate_dt(dq, d_q, nq, dt);
    cu_accumulate_dt(dk, d_k, nq, dt);
    cu_accumulate_dt(dv, d_v, nv, dt);
    return 0;
}

int cu_cudnn_attention_check_graphs(int B, int T, int H, int dqk, int dv, int dt) {
    if (dt != CU_BF16 && dt != CU_F16) {
        set_reason("the cuDNN graphs are built for bf16 / fp16 only");
        return -1;
    }
    if (B < 1 || T < 1 || H < 1 || dqk < 1 || dv < 1) {
        set_reason("invalid sizes B %d T %d H %d dqk %d dv %d", B, T, H, dqk, dv);
        return -1;
    }
    Shapes s;
    shapes(&s, B, T, H, dqk, dv);
    cudnnDataType_t io = dt == CU_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
    Plan p;
    memset(&p, 0, sizeof p);
    char fw[160], bw[160];
    if (build_forward(&p, &s, io, CUDNN_DATA_FLOAT, fw, sizeof fw, 1) < 0) {
        set_reason("forward: %s", fw);
        return -1;
    }
    if (build_backward(&p, &s, io, CUDNN_DATA_FLOAT, bw, sizeof bw, 1) < 0) {
        set_reason("backward: %s", bw);
        return -1;
    }
    set_reason("forward: %s; backward: %s", fw, bw);
    return 0;
}

void cu_cudnn_attention_release(void) {
    for (int i = 0; i < CACHE_N; i++)
        if (g_cache[i].used) plan_free(&g_cache[i].fwd), plan_free(&g_cache[i].bwd), g_cache[i].used = 0;
    if (g_ws) cudaFree(g_ws);
    if (g_scr) cudaFree(g_scr);
    g_ws = g_scr = NULL, g_ws_size = g_scr_size = 0;
    if (g_handle) cudnnDestroy(g_handle);
    g_handle = NULL;
    g_dev_state = 0;
}

}  // extern "C"

#endif  // ATT_CUDNN
