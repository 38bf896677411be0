// NF4 x fp32 matmul on CUDA (pretrained/nf4_cuda.cu). The same source builds with nvcc and,
// for tests without a GPU, with g++ through the CUDA-on-CPU harness (tests/cuda_harness).
// Device memory holds the 4-bit form as it is (codes, and either fp32 absmax or the
// double-quantized absmax with its nested statistics): ~4.1-4.5 bits per weight.
#ifndef MOE_NF4_CUDA_H
#define MOE_NF4_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int64_t rows, cols;     // (out, in); cols must be even
    int blocksize;          // even
    int nested_blocksize;
    float nested_offset;
    uint8_t *q;             // device (rows*cols/2)
    float *code;            // device (16)
    float *absmax;          // device (n_blocks) fp32, or NULL when nested
    uint8_t *qabsmax;       // device (n_blocks) when nested
    float *nested_absmax;   // device
    float *nested_code;     // device (256)
    float *bias;            // device (rows) or NULL
} Nf4Cuda;

// Upload a quantized tensor given by its host arrays (those of pretrained/nf4.h Nf4Tensor).
// absmax != NULL: plain; else qabsmax, nested_absmax, nested_code, nested_blocksize and
// nested_offset. bias (rows) may be NULL. Returns 0, or -1 when the shape is unsupported.
int nf4cu_upload(Nf4Cuda *d, int64_t rows, int64_t cols, int blocksize, const uint8_t *q, const float *code,
                 const float *absmax, const uint8_t *qabsmax, const float *nested_absmax, const float *nested_code,
                 int nested_blocksize, float nested_offset, const float *bias);
void nf4cu_free(Nf4Cuda *d);
// y (n, rows) = x (n, cols) W^T (+ bias); x, y device memory. One warp per output row, the
// lanes stride over pairs of values (one byte), codes decoded in registers, up to 8 tokens
// per pass, warp-shuffle reduction.
void nf4cu_matmul(const Nf4Cuda *W, const float *x, int n, float *y);
// device memory helpers (host <-> device copies synchronise)
void *nf4cu_malloc(size_t bytes);
void nf4cu_free_ptr(void *p);
void nf4cu_upload_bytes(void *dst, const void *src, size_t bytes);
void nf4cu_download_bytes(void *dst, const void *src, size_t bytes);
const char *nf4cu_backend(void);

#ifdef __cplusplus
}
#endif

#endif
