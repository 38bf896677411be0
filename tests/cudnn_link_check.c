// Link check of the cuDNN attention path (run by tests/test_cuda_nvcc.sh when cuDNN is found):
// the nvcc-built model/cuda/attention_cudnn.cu (with MOE_WITH_CUDNN) and convert.cu linked
// against libcudart and libcudnn. It loads the library (cudnnGetVersion), asks
// cu_cudnn_attention_supported() and runs the refusal paths: fp32 is refused by argument,
// and without a GPU every shape is refused with "no CUDA device" and forward / backward
// return -1 without touching their (here NULL) pointers. With a GPU it only prints what
// cuDNN answered for the model's head sizes (the numbers are checked by
// test_cuda_attention_cudnn under make test-gpu). Then it builds the forward and backward
// graphs up to the finalised operation graphs, which needs no device.
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <string.h>

#include "../model/cuda/attention_cudnn.h"
#include "../model/cuda/cuda_ops.h"
#include "test.h"

int main(void) {
    size_t ver = cu_cudnn_version();
    printf("# cuDNN runtime version %zu\n", ver);
    test_begin("cudnn_link_version");
    CHECK(ver >= 90000 && ver < 100000, "cudnnGetVersion() = %zu, expected 9.x", ver);
    test_end();

    test_begin("cudnn_link_refuses_fp32");
    int s32 = cu_cudnn_attention_supported(2, 100, 4, 96, 64, CU_F32);
    printf("# supported(fp32) = %d: %s\n", s32, cu_cudnn_attention_reason());
    CHECK(s32 == 0 && strstr(cu_cudnn_attention_reason(), "fp32"), "fp32 not refused: %d (%s)", s32,
          cu_cudnn_attention_reason());
    test_end();

    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess) ndev = 0;
    (void)cudaGetLastError();
    printf("# CUDA devices: %d%s%s\n", ndev, e != cudaSuccess ? " - " : "", e != cudaSuccess ? cudaGetErrorString(e) : "");
    int dts[2] = {CU_BF16, CU_F16};
    for (int i = 0; i < 2; i++) {
        char name[64];
        snprintf(name, sizeof name, "cudnn_link_supported_%s", cu_dtype_name(dts[i]));
        test_begin(name);
        int s = cu_cudnn_attention_supported(2, 100, 4, 96, 64, dts[i]);
        const char *why = cu_cudnn_attention_reason();
        printf("# supported(B 2, T 100, H 4, dqk 96, dv 64, %s) = %d: %s\n", cu_dtype_name(dts[i]), s, why);
        CHECK(why && why[0], "no reason given");
        if (ndev == 0) {
            CHECK(s == 0 && strstr(why, "no CUDA device"), "expected a refusal for want of a device: %d (%s)", s, why);
            int f = cu_cudnn_attention_forward(NULL, NULL, NULL, NULL, NULL, 2, 100, 4, 96, 64, 0.1f, dts[i]);
            int b = cu_cudnn_attention_backward(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 2, 100, 4, 96, 64,
                                                0.1f, dts[i]);
            CHECK(f == -1 && b == -1, "forward %d, backward %d: expected -1 (refused)", f, b);
        }
        test_end();
    }
    // Every tensor / operation descriptor of both graphs and the operation graphs finalise (no
    // device needed): cuDNN checks the attributes' types and the shapes of every matmul,
    // pointwise, reduction and reshape here. Whether an engine takes the graph, and what it
    // computes, needs a GPU (make test-gpu).
    static const int shp[][5] = {{2, 37, 3, 64, 64}, {1, 70, 2, 96, 64}, {1, 200, 3, 96, 64}, {2, 128, 4, 128, 128},
                                 {3, 5, 2, 32, 32},  {1, 64, 2, 192, 128}};
    for (size_t i = 0; i < sizeof shp / sizeof shp[0]; i++)
        for (int j = 0; j < 2; j++) {
            char name[96];
            snprintf(name, sizeof name, "cudnn_graphs_finalise_B%d_T%d_H%d_dqk%d_dv%d_%s", shp[i][0], shp[i][1],
                     shp[i][2], shp[i][3], shp[i][4], cu_dtype_name(dts[j]));
            test_begin(name);
            int r = cu_cudnn_attention_check_graphs(shp[i][0], shp[i][1], shp[i][2], shp[i][3], shp[i][4], dts[j]);
            CHECK(r == 0, "%s", cu_cudnn_attention_reason());
            if (i == 0 && j == 0) printf("# %s\n", cu_cudnn_attention_reason());
            test_end();
        }
    cu_cudnn_attention_release();
    return test_summary();
}
