// C interface of tests/cuda_harness/harness_kernels.cu (tests of the harness itself).
#ifndef MOE_HARNESS_KERNELS_H
#define MOE_HARNESS_KERNELS_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif
void hk_shuffle(int *out, int n, int block);             // out (n, 5)
void hk_ballot(unsigned *out, int block);                // out (nwarps, 3)
void hk_block_sum(float *out, const float *in, int n, int block);  // out (nblocks, 2): sum, max
void hk_read_before_write(float *out, int nblocks);      // out (nblocks, 64)
void hk_neighbour(float *out, int nblocks, int block, int with_barrier);
void hk_dyn_reverse(float *out, const float *in, int n, int block);
void hk_histogram(int *hist, const int *vals, int n, int nbins);  // hist (nbins + 1): counts, max
void hk_divergent_barrier(float *out);
void hk_two_barriers(float *out);
void hk_warp_deadlock(float *out);
void hk_partial_mask(float *out);
void hk_bad_launch(float *out);
void hk_stack_overflow(int *out);  // harness build only
// WMMA: out (16 x 16) = a b + c with a, b 16 x 16 raw fp16 / bf16 bits (is_bf16), c fp32; flags:
// 1 a column-major, 2 b column-major, 4 c column-major, 8 out column-major, 16 a = 0.1 (fill)
void hk_wmma_product(float *out, const uint16_t *a, const uint16_t *b, const float *c, int is_bf16, int flags);
void hk_wmma_store_race(float *out, int with_syncwarp);  // out (32): each lane's sum of the stored 2.0 tile
void hk_wmma_divergent(float *out);
void hk_wmma_bad_ldm(float *out);
void hk_wmma_misaligned(float *out);
void hk_wmma_plain_shared(float *out);
void hk_wmma_nonuniform(float *out);
void hk_wmma_partial_warp(float *out);
// harness control (tests/cuda_harness/harness.cc)
void moe_hx_set_error_mode(int record);
const char *moe_hx_last_error(void);
void moe_hx_clear_error(void);
long moe_hx_launch_count(void);
long moe_hx_switch_count(void);
#ifdef __cplusplus
}
#endif
#endif
