// Device-side helpers shared by the kernels: element loads/stores with the accumulation type, index arithmetic.
#pragma once

#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace ganforge {

// Accumulation type: half and float inputs accumulate in float, double in double.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

// torch builds extensions with __CUDA_NO_HALF_CONVERSIONS__, so half is converted explicitly.
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T, typename A> __device__ __forceinline__ T from_acc(A v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half_rn(v); }

// Remainder in [0, m) for any sign of a (C++ % keeps the sign of a).
__device__ __forceinline__ int floor_mod(int a, int m) {
    int r = a % m;
    return r < 0 ? r + m : r;
}

// One-dimensional launch for a grid-stride loop over n items.
inline unsigned int grid_size(int64_t n, int threads) {
    int64_t blocks = (n + threads - 1) / threads;
    return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535LL * 16)));
}

}  // namespace ganforge
