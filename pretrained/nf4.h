// NF4 4-bit quantization, compatible with bitsandbytes (functional.py quantize_4bit,
// backends/default/ops.py, csrc/kernels.cu):
//  - code book: the 16 NF4 values (nf4_code), index 0..15, sorted;
//  - blocks of `blocksize` (64) consecutive values of the flattened row-major tensor, one
//    fp32 absmax per block; x * (1/absmax) is rounded to the nearest code (ties to the lower
//    code, as torch.bucketize on the midpoints);
//  - two codes per byte, the FIRST element in the HIGH nibble: byte j = q[2j] << 4 | q[2j+1];
//  - optional double quantization ("compress_statistics"): offset = mean(absmax); absmax -
//    offset quantized blockwise (256) to 8 bits with the signed dynamic map
//    (create_dynamic_map(signed=True)); one fp32 nested absmax per 256 blocks.
//    Decoded absmax = nested_code[q] * nested_absmax[b / 256] + offset.
//  - saved form (HF / bitsandbytes Linear4bit state dict): W.weight (U8, [ceil(n/2), 1]),
//    W.weight.absmax (F32, or U8 when nested), W.weight.quant_map (F32[16]),
//    W.weight.nested_absmax, W.weight.nested_quant_map (F32[256]),
//    W.weight.quant_state.bitsandbytes__nf4 (U8 bytes of a JSON object: quant_type,
//    blocksize, dtype, shape, nested_blocksize, nested_offset, nested_dtype).
#ifndef MOE_NF4_H
#define MOE_NF4_H

#include <stdint.h>

#include "../common/util.h"
#include "safetensors.h"

#define NF4_BLOCK 64
#define NF4_NESTED_BLOCK 256

extern const float nf4_code[16];

// bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), sorted.
void nf4_dynamic_map(float map[256]);
// Index of the nearest value of a sorted code book (ties to the lower index).
int nf4_nearest(const float *code, int n, float v);

typedef struct {
    int64_t rows, cols;          // logical weight shape (out, in), row-major
    int64_t n;                   // rows * cols
    int blocksize;
    int64_t n_blocks;            // ceil(n / blocksize)
    uint8_t *q;                  // (ceil(n/2)) packed codes
    float code[16];              // quant_map
    int nested;                  // double-quantized absmax
    float *absmax;               // (n_blocks) when !nested
    uint8_t *qabsmax;            // (n_blocks) when nested
    int nested_blocksize;
    int64_t n_nested;            // ceil(n_blocks / nested_blocksize)
    float *nested_absmax;        // (n_nested)
    float nested_code[256];
    float nested_offset;
    int owned;                   // q/absmax/... malloc'd here
} Nf4Tensor;

// Quantize n = rows*cols values of src (dtype ST_F32, ST_BF16 or ST_F16, raw little-endian
// bytes, e.g. straight from a mapped safetensors file) without an fp32 copy of the tensor.
int nf4_quantize_raw(Nf4Tensor *t, const void *src, int src_dtype, int64_t rows, int64_t cols, int blocksize,
                     int double_quant, MoeErr *err);
static inline int nf4_quantize(Nf4Tensor *t, const float *x, int64_t rows, int64_t cols, int blocksize,
                               int double_quant, MoeErr *err) {
    return nf4_quantize_raw(t, x, ST_F32, rows, cols, blocksize, double_quant, err);
}
// Read a tensor saved by bitsandbytes (prefix = "model.layers.0.mlp.up_proj": reads
// prefix.weight, prefix.weight.absmax, ...) into owned memory.
int nf4_from_bnb(Nf4Tensor *t, const StModel *m, const char *prefix, int64_t rows, int64_t cols, MoeErr *err);
// Is prefix.weight a bitsandbytes 4-bit tensor (a quant_state entry exists)?
int nf4_is_bnb(const StModel *m, const char *prefix);
// Add the tensor in bitsandbytes' saved form to a writer (for tests and exports).
int nf4_write_bnb(const Nf4Tensor *t, StWriter *w, const char *prefix, const char *dtype_name, MoeErr *err);
void nf4_free(Nf4Tensor *t);

// Decoded absmax of block b.
static inline float nf4_absmax(const Nf4Tensor *t, int64_t b) {
    if (!t->nested) return t->absmax[b];
    return t->nested_code[t->qabsmax[b]] * t->nested_absmax[b / t->nested_blocksize] + t->nested_offset;
}
static inline int nf4_get_code(const Nf4Tensor *t, int64_t i) {
    uint8_t byte = t->q[i >> 1];
    return (i & 1) ? (byte & 15) : (byte >> 4);
}
// Dequantize elements [i0, i0 + count) of the flattened tensor into out.
void nf4_dequantize_range(const Nf4Tensor *t, int64_t i0, int64_t count, float *out);
static inline void nf4_dequantize(const Nf4Tensor *t, float *out) { nf4_dequantize_range(t, 0, t->n, out); }
// bytes held by the quantized form (codes + statistics)
int64_t nf4_bytes(const Nf4Tensor *t);
// bytes of an NF4 tensor of n elements, as planned before loading
int64_t nf4_planned_bytes(int64_t n, int blocksize, int double_quant);

// y (n_tok, rows) = x (n_tok, cols) W^T (+ bias (rows) when not NULL). OpenMP over output
// rows; AVX-512 (16-entry permute) or AVX2 (two permutes + blend) decode; dequantize-to-tile + GEMM for
// large n_tok. Thread-safe, allocates its scratch.
void nf4_matmul(const Nf4Tensor *W, const float *x, int64_t n_tok, float *y, const float *bias);
// the two kernels behind nf4_matmul (exposed for tests and the benchmark)
void nf4_matmul_fused(const Nf4Tensor *W, const float *x, int64_t n_tok, float *y, const float *bias);
void nf4_matmul_tiled(const Nf4Tensor *W, const float *x, int64_t n_tok, float *y, const float *bias);
// token count from which nf4_matmul switches to the tiled GEMM path
extern int nf4_gemm_threshold;

#endif
