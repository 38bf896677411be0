// C interface of tests/cuda_harness/harness_kernels.cu (tests of the harness itself).
#ifndef MOE_HARNESS_KERNELS_H
#define MOE_HARNESS_KERNELS_H
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
