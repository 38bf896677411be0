// Element types (CuDtype of cuda_ops.h): sizes and names, conversions between fp32, bf16 and
// fp16 (round to nearest even), and fp32 -> bf16 with stochastic rounding.
#include "cuda_common.cuh"
#include "cuda_ops.h"

template <typename To, typename Ti>
__global__ void convert_kernel(To *out, const Ti *in, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = stf<To>(ldf(in[i]));
}

__global__ void f32_to_bf16_stochastic_kernel(bf16 *out, const float *in, long n, unsigned seed) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = round_stochastic_bf16(in[i], hash32((unsigned long long)i, seed));
}

template <typename To>
static void convert_from(To *out, const void *in, int in_dt, long n) {
    DISPATCH_DT(in_dt, Ti, auto *kfn = convert_kernel<To, Ti>;
                LAUNCH(kfn, ceil_div(n, 256), 256, 0, 0, out, (const Ti *)in, n));
}

extern "C" {

size_t cu_dtype_size(int dt) { return dt == CU_F32 ? 4 : 2; }
const char *cu_dtype_name(int dt) { return dt == CU_BF16 ? "bf16" : dt == CU_F16 ? "fp16" : "fp32"; }

void cu_convert(void *out, int out_dt, const void *in, int in_dt, long n) {
    if (n <= 0) return;
    if (out_dt == in_dt) {
        cudaCheck(cudaMemcpyAsync(out, in, cu_dtype_size(in_dt) * (size_t)n, cudaMemcpyDeviceToDevice, 0));
        return;
    }
    DISPATCH_DT(out_dt, To, convert_from<To>((To *)out, in, in_dt, n));
}

void cu_f32_to_bf16_stochastic(uint16_t *out, const float *in, long n, unsigned seed) {
    if (n > 0) LAUNCH(f32_to_bf16_stochastic_kernel, ceil_div(n, 256), 256, 0, 0, (bf16 *)out, in, n, seed);
}

}  // extern "C"
