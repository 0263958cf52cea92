// upfirdn2d kernel: one thread per output sample, summing the filter taps that land on input samples.
//
// With u the input after zero insertion (u[Y, X] = x[Y / upy, X / upx] where both divide exactly, else 0),
//     y[oy, ox] = gain * sum_{a, b} w[a, b] * u[oy * downy + a - py0, ox * downx + b - px0],
// so only every up-th tap along each axis, starting at the first one that lands on a multiple of up, is visited.

#include "device.cuh"
#include "upfirdn2d.h"

namespace ganforge {
namespace {

template <typename T> __global__ void upfirdn2d_kernel(UpFirDn2dParams p) {
    using A = typename AccType<T>::type;
    const T* x = static_cast<const T*>(p.x);
    const A* w = static_cast<const A*>(p.w);
    T* y = static_cast<T*>(p.y);
    const int64_t total = p.planes * p.out_h * p.out_w;
    const int64_t stride = int64_t(blockDim.x) * gridDim.x;

    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int ox = static_cast<int>(i % p.out_w);
        const int oy = static_cast<int>((i / p.out_w) % p.out_h);
        const int64_t plane = i / (int64_t(p.out_w) * p.out_h);
        const T* xp = x + plane * p.in_h * p.in_w;

        // Position of tap 0 in the zero-inserted input; taps a with (base + a) % up == 0 hit input samples.
        const int base_y = oy * p.downy - p.py0;
        const int base_x = ox * p.downx - p.px0;
        const int a0 = floor_mod(-base_y, p.upy);
        const int b0 = floor_mod(-base_x, p.upx);

        A sum = A(0);
        for (int a = a0; a < p.fh; a += p.upy) {
            const int iy = (base_y + a) / p.upy;  // exact: base_y + a is a multiple of upy
            if (iy < 0 || iy >= p.in_h) continue;
            for (int b = b0; b < p.fw; b += p.upx) {
                const int ix = (base_x + b) / p.upx;
                if (ix < 0 || ix >= p.in_w) continue;
                sum += w[a * p.fw + b] * to_acc(xp[iy * p.in_w + ix]);
            }
        }
        y[i] = from_acc<T, A>(sum * A(p.gain));
    }
}

template <typename T> cudaError_t launch(const UpFirDn2dParams& p, cudaStream_t stream) {
    constexpr int kThreads = 256;
    const int64_t total = p.planes * p.out_h * p.out_w;
    upfirdn2d_kernel<T><<<grid_size(total, kThreads), kThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_upfirdn2d(const UpFirDn2dParams& p, DType dtype, cudaStream_t stream) {
    if (p.planes * p.out_h * p.out_w == 0) return cudaSuccess;
    switch (dtype) {
        case DType::kFloat32: return launch<float>(p, stream);
        case DType::kFloat16: return launch<__half>(p, stream);
        case DType::kFloat64: return launch<double>(p, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace ganforge
