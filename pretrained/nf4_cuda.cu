// NF4 x fp32 matmul kernels. See nf4_cuda.h.
#include <string.h>

#include "../model/cuda/cuda_common.cuh"
#include "nf4_cuda.h"

#define NF4CU_NT 8         // tokens per pass (accumulators in registers)
#define NF4CU_WARPS 4      // output rows per block

// absmax of block b: plain fp32, or nested_code[q] * nested_absmax[b / nbs] + offset
static __device__ inline float nf4cu_absmax(const float *absmax, const uint8_t *qabs, const float *nabs,
                                            const float *ncode_s, int nbs, float off, long b) {
    return absmax ? absmax[b] : ncode_s[qabs[b]] * nabs[b / nbs] + off;
}

__global__ void nf4cu_matmul_kernel(float *y, const float *x, const uint8_t *q, const float *code, const float *absmax,
                                    const uint8_t *qabs, const float *nabs, const float *ncode, int nbs, float off,
                                    const float *bias, int n, int rows, int cols, int bs) {
    SHARED_ARRAY(float, cb, 16);
    SHARED_ARRAY(float, ncb, 256);
    int tid = threadIdx.x;
    if (tid < 16) cb[tid] = code[tid];
    if (!absmax)
        for (int i = tid; i < 256; i += blockDim.x) ncb[i] = ncode[i];
    __syncthreads();
    int warp = tid / 32, lane = tid % 32;
    int row = blockIdx.x * (blockDim.x / 32) + warp;
    if (row >= rows) return;  // whole warps leave together: the shuffles below see full warps
    const long base = (long)row * cols;  // element index of the row start (even: cols is even)
    for (int t0 = 0; t0 < n; t0 += NF4CU_NT) {
        int nt = n - t0 < NF4CU_NT ? n - t0 : NF4CU_NT;
        float acc[NF4CU_NT];
        for (int i = 0; i < NF4CU_NT; i++) acc[i] = 0.0f;
        for (int c = 2 * lane; c < cols; c += 64) {
            long e = base + c;
            unsigned byte = q[e >> 1];
            float am = nf4cu_absmax(absmax, qabs, nabs, ncb, nbs, off, e / bs);  // a pair never straddles blocks
            float w0 = cb[byte >> 4] * am, w1 = cb[byte & 15] * am;
            for (int i = 0; i < nt; i++) {
                const float *xi = x + (long)(t0 + i) * cols + c;
                acc[i] += w0 * xi[0] + w1 * xi[1];
            }
        }
        for (int i = 0; i < NF4CU_NT; i++) {
            float s = warp_sum(acc[i]);
            if (lane == 0 && i < nt) y[(long)(t0 + i) * rows + row] = s + (bias ? bias[row] : 0.0f);
        }
    }
}

extern "C" {

void *nf4cu_malloc(size_t bytes) {
    void *p = NULL;
    cudaCheck(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}
void nf4cu_free_ptr(void *p) {
    if (p) cudaCheck(cudaFree(p));
}
void nf4cu_upload_bytes(void *dst, const void *src, size_t bytes) {
    if (bytes) cudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void nf4cu_download_bytes(void *dst, const void *src, size_t bytes) {
    if (bytes) cudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
const char *nf4cu_backend(void) {
#if defined(MOE_CUDA_HARNESS)
    return "cuda-harness";
#else
    return "cuda";
#endif
}

static void *up(const void *src, size_t bytes) {
    void *d = nf4cu_malloc(bytes);
    nf4cu_upload_bytes(d, src, bytes);
    return d;
}

int nf4cu_upload(Nf4Cuda *d, int64_t rows, int64_t cols, int blocksize, const uint8_t *q, const float *code,
                 const float *absmax, const uint8_t *qabsmax, const float *nested_absmax, const float *nested_code,
                 int nested_blocksize, float nested_offset, const float *bias) {
    memset(d, 0, sizeof(*d));
    if (rows < 1 || cols < 2 || (cols & 1) || blocksize < 2 || (blocksize & 1) || rows > 2147483647 / 2 ||
        cols > 2147483647 || (!absmax && (!qabsmax || !nested_absmax || !nested_code || nested_blocksize < 1)))
        return -1;
    long n = (long)(rows * cols), nb = (n + blocksize - 1) / blocksize;
    d->rows = rows;
    d->cols = cols;
    d->blocksize = blocksize;
    d->q = (uint8_t *)up(q, (size_t)n / 2);
    d->code = (float *)up(code, 16 * sizeof(float));
    if (absmax) {
        d->absmax = (float *)up(absmax, (size_t)nb * sizeof(float));
    } else {
        long nn = (nb + nested_blocksize - 1) / nested_blocksize;
        d->qabsmax = (uint8_t *)up(qabsmax, (size_t)nb);
        d->nested_absmax = (float *)up(nested_absmax, (size_t)nn * sizeof(float));
        d->nested_code = (float *)up(nested_code, 256 * sizeof(float));
        d->nested_blocksize = nested_blocksize;
        d->nested_offset = nested_offset;
    }
    if (bias) d->bias = (float *)up(bias, (size_t)rows * sizeof(float));
    return 0;
}

void nf4cu_free(Nf4Cuda *d) {
    nf4cu_free_ptr(d->q);
    nf4cu_free_ptr(d->code);
    nf4cu_free_ptr(d->absmax);
    nf4cu_free_ptr(d->qabsmax);
    nf4cu_free_ptr(d->nested_absmax);
    nf4cu_free_ptr(d->nested_code);
    nf4cu_free_ptr(d->bias);
    memset(d, 0, sizeof(*d));
}

void nf4cu_matmul(const Nf4Cuda *W, const float *x, int n, float *y) {
    if (n <= 0) return;
    int grid = ceil_div((long)W->rows, NF4CU_WARPS);
    LAUNCH(nf4cu_matmul_kernel, grid, 32 * NF4CU_WARPS, 0, 0, y, x, W->q, W->code, W->absmax, W->qabsmax,
           W->nested_absmax, W->nested_code, W->nested_blocksize, W->nested_offset, W->bias, n, (int)W->rows,
           (int)W->cols, W->blocksize);
}

}  // extern "C"
