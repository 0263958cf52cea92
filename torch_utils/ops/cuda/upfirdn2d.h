// upfirdn2d kernel: zero-insertion upsampling, padding, 2-D FIR correlation and decimation, one pass.
#pragma once

#include "common.h"

namespace ganforge {

struct UpFirDn2dParams {
    const void* x;         // [planes, in_h, in_w] input in T, contiguous
    const void* w;         // [fh, fw] correlation weights in the accumulation type (float, or double for double x)
    void* y;               // [planes, out_h, out_w] output in T
    int64_t planes;        // N * C
    int in_h, in_w;        // input size
    int out_h, out_w;      // output size
    int upx, upy;          // upsampling factors
    int downx, downy;      // downsampling factors
    int px0, py0;          // left and top padding (negative crops); the right/bottom ones only set out_w/out_h
    int fw, fh;            // filter size
    double gain;           // scale applied to every output
};

cudaError_t launch_upfirdn2d(const UpFirDn2dParams& p, DType dtype, cudaStream_t stream);

}  // namespace ganforge
