// filtered_lrelu kernel: bias, upsampling FIR filter, leaky ReLU with gain and clamp, downsampling FIR filter,
// fused per output tile so that the upsampled signal never reaches global memory.
#pragma once

#include "common.h"

namespace ganforge {

struct FilteredLreluParams {
    const void* x;       // [planes, in_h, in_w] input in T, contiguous
    const void* b;       // [channels] bias in T
    const void* wu;      // [fu_h, fu_w] upsampling correlation weights, accumulation type
    const void* wd;      // [fd_h, fd_w] downsampling correlation weights, accumulation type
    void* y;             // [planes, out_h, out_w] output in T
    uint8_t* mask;       // [planes, mid_h, mid_w] per upsampled sample: 0 negative, 1 positive, 2 clamped
    int64_t planes;      // N * C
    int channels;        // C: plane p has bias b[p % C]
    int in_h, in_w;      // input size
    int mid_h, mid_w;    // size of the part of the upsampled signal that the outputs read
    int out_h, out_w;    // output size
    int up, down;        // resampling factors (both axes)
    int px0, py0;        // left and top padding of the upsampling step (negative crops)
    int fu_w, fu_h;      // upsampling filter size
    int fd_w, fd_h;      // downsampling filter size
    double up_gain;      // gain of the upsampling filter (up * up)
    double gain;         // gain after the leaky ReLU
    double slope;        // negative slope of the leaky ReLU
    double clamp;        // clamp limit, or < 0 for none
};

// Largest dynamic shared memory a block may use; the host side checks a filter fits before launching.
constexpr int kFilteredLreluMaxShared = 48 * 1024;

cudaError_t launch_filtered_lrelu(const FilteredLreluParams& p, DType dtype, cudaStream_t stream);

}  // namespace ganforge
