// bias_act kernel: y = clamp(f(x + b) * gain), or one of its derivatives times an incoming gradient.
#pragma once

#include "common.h"

namespace ganforge {

// Activation ids; the order matches ACT_IDS in bias_act.py.
enum class Act : int { kLinear, kRelu, kLrelu, kTanh, kSigmoid, kElu, kSelu, kSoftplus, kSwish };

struct BiasActParams {
    const void* x;     // [numel] input before the bias, contiguous
    const void* b;     // [channels] bias in x's dtype, or nullptr
    const void* g;     // [numel] incoming gradient (order 1 and 2), or nullptr
    void* y;           // [numel] output
    int64_t numel;     // number of elements of x
    int64_t inner;     // product of x's sizes after the bias axis: element i has bias index (i / inner) % channels
    int64_t channels;  // length of the bias axis
    int act;           // an Act
    int order;         // 0: y = clamp(f(z) * gain); 1: y = g * f'(z) * gain * m; 2: y = g * f''(z) * gain * m
    double alpha;      // activation parameter (negative slope of lrelu)
    double gain;       // scale after the activation
    double clamp;      // clamp limit, or < 0 for none; m = 1 where |f(z) * gain| <= clamp, else 0
};

cudaError_t launch_bias_act(const BiasActParams& p, DType dtype, cudaStream_t stream);

}  // namespace ganforge
