// bias_act kernel. z = x + b; each thread evaluates the activation (or its first or second derivative) at z.
// The derivatives are written out by hand so that double backward (R1 regularization) needs no autograd graph.

#include <cmath>

#include "bias_act.h"
#include "device.cuh"

namespace ganforge {
namespace {

// SELU constants (Klambauer et al. 2017), as in torch.nn.functional.selu.
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;
// torch.nn.functional.softplus with its default threshold returns z itself above this.
constexpr double kSoftplusThreshold = 20.0;

template <typename A> __device__ __forceinline__ A sigmoid(A z) { return A(1) / (A(1) + exp(-z)); }

// f(z) for order 0, f'(z) for order 1, f''(z) for order 2.
template <typename A> __device__ A activation(int act, int order, A z, A alpha) {
    switch (static_cast<Act>(act)) {
        case Act::kLinear:
            return order == 0 ? z : (order == 1 ? A(1) : A(0));
        case Act::kRelu:  // the derivative at 0 is 0, as in torch
            if (order == 0) return z > A(0) ? z : A(0);
            return order == 1 ? (z > A(0) ? A(1) : A(0)) : A(0);
        case Act::kLrelu:
            if (order == 0) return z > A(0) ? z : z * alpha;
            return order == 1 ? (z > A(0) ? A(1) : alpha) : A(0);
        case Act::kTanh: {
            A t = tanh(z);
            if (order == 0) return t;
            A d = A(1) - t * t;
            return order == 1 ? d : A(-2) * t * d;
        }
        case Act::kSigmoid: {
            A s = sigmoid(z);
            if (order == 0) return s;
            A d = s * (A(1) - s);
            return order == 1 ? d : d * (A(1) - A(2) * s);
        }
        case Act::kElu:  // alpha = 1, as in torch.nn.functional.elu's default
            if (z > A(0)) return order == 0 ? z : (order == 1 ? A(1) : A(0));
            return order == 0 ? expm1(z) : exp(z);
        case Act::kSelu:
            if (z > A(0)) return order == 0 ? A(kSeluScale) * z : (order == 1 ? A(kSeluScale) : A(0));
            return order == 0 ? A(kSeluScale * kSeluAlpha) * expm1(z) : A(kSeluScale * kSeluAlpha) * exp(z);
        case Act::kSoftplus: {
            if (z > A(kSoftplusThreshold)) return order == 0 ? z : (order == 1 ? A(1) : A(0));
            if (order == 0) return log1p(exp(z));
            A s = sigmoid(z);
            return order == 1 ? s : s * (A(1) - s);
        }
        case Act::kSwish: {
            A s = sigmoid(z);
            if (order == 0) return z * s;
            if (order == 1) return s * (A(1) + z * (A(1) - s));
            return s * (A(1) - s) * (A(2) + z * (A(1) - A(2) * s));
        }
    }
    return A(0);
}

template <typename T> __global__ void bias_act_kernel(BiasActParams p) {
    using A = typename AccType<T>::type;
    const T* x = static_cast<const T*>(p.x);
    const T* b = static_cast<const T*>(p.b);
    const T* g = static_cast<const T*>(p.g);
    T* y = static_cast<T*>(p.y);
    const A alpha = A(p.alpha), gain = A(p.gain), clamp = A(p.clamp);
    const bool clamped = p.clamp >= 0;

    const int64_t stride = int64_t(blockDim.x) * gridDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.numel; i += stride) {
        A z = to_acc(x[i]);
        if (b != nullptr) z += to_acc(b[(i / p.inner) % p.channels]);
        A out;
        if (p.order == 0) {
            A v = activation<A>(p.act, 0, z, alpha) * gain;
            // Written with comparisons (not fmin/fmax) so that NaN propagates, as torch.clamp does.
            if (clamped) v = v < -clamp ? -clamp : (v > clamp ? clamp : v);
            out = v;
        } else {
            A d = activation<A>(p.act, p.order, z, alpha) * gain;
            if (clamped) {
                // torch.clamp passes the gradient where the unclamped value lies in [-clamp, clamp].
                A v = activation<A>(p.act, 0, z, alpha) * gain;
                if (!(v >= -clamp && v <= clamp)) d = A(0);
            }
            out = to_acc(g[i]) * d;
        }
        y[i] = from_acc<T, A>(out);
    }
}

template <typename T> cudaError_t launch(const BiasActParams& p, cudaStream_t stream) {
    constexpr int kThreads = 256;
    bias_act_kernel<T><<<grid_size(p.numel, kThreads), kThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_bias_act(const BiasActParams& p, DType dtype, cudaStream_t stream) {
    if (p.numel == 0) return cudaSuccess;
    switch (dtype) {
        case DType::kFloat32: return launch<float>(p, stream);
        case DType::kFloat16: return launch<__half>(p, stream);
        case DType::kFloat64: return launch<double>(p, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace ganforge
