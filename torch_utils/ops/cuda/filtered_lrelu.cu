// filtered_lrelu kernel. Each block computes a tile of output samples of one image plane in two stages:
//   1. every upsampled sample that the tile reads, into shared memory:
//          u[Y, X] = up_gain * sum_{a, b} wu[a, b] * (x + bias)[zero-inserted at (Y + a - py0, X + b - px0)]
//          v[Y, X] = clamp(lrelu(u) * gain), and its state (negative, positive or clamped) into `mask`;
//   2. each output sample from shared memory: y[oy, ox] = sum_{a, b} wd[a, b] * v[oy * down + a, ox * down + b].
// Neighbouring tiles overlap by the downsampling filter's support and recompute (and rewrite, with the same
// value) the samples they share.

#include "device.cuh"
#include "filtered_lrelu.h"

namespace ganforge {
namespace {

constexpr int kThreads = 256;

template <typename T> __global__ void filtered_lrelu_kernel(FilteredLreluParams p, int tile_h, int tile_w) {
    using A = typename AccType<T>::type;
    extern __shared__ unsigned char smem_raw[];
    A* v = reinterpret_cast<A*>(smem_raw);  // [region_h, region_w] activated upsampled samples of this tile

    const T* x = static_cast<const T*>(p.x);
    const T* bias = static_cast<const T*>(p.b);
    const A* wu = static_cast<const A*>(p.wu);
    const A* wd = static_cast<const A*>(p.wd);
    T* y = static_cast<T*>(p.y);
    const A up_gain = A(p.up_gain), gain = A(p.gain), slope = A(p.slope), clamp = A(p.clamp);
    const bool clamped = p.clamp >= 0;

    const int oy0 = blockIdx.y * tile_h, ox0 = blockIdx.x * tile_w;
    const int th = min(tile_h, p.out_h - oy0), tw = min(tile_w, p.out_w - ox0);  // outputs in this tile
    const int region_h = (th - 1) * p.down + p.fd_h, region_w = (tw - 1) * p.down + p.fd_w;
    const int Y0 = oy0 * p.down, X0 = ox0 * p.down;  // top-left of the region in upsampled coordinates

    for (int64_t plane = blockIdx.z; plane < p.planes; plane += gridDim.z) {
        const T* xp = x + plane * p.in_h * p.in_w;
        const A b = to_acc(bias[plane % p.channels]);
        uint8_t* mp = p.mask + plane * p.mid_h * p.mid_w;

        // Stage 1: upsample and activate the region.
        for (int i = threadIdx.x; i < region_h * region_w; i += blockDim.x) {
            const int Y = Y0 + i / region_w, X = X0 + i % region_w;
            const int base_y = Y - p.py0, base_x = X - p.px0;
            const int a0 = floor_mod(-base_y, p.up), c0 = floor_mod(-base_x, p.up);
            A u = A(0);
            for (int a = a0; a < p.fu_h; a += p.up) {
                const int iy = (base_y + a) / p.up;  // exact: base_y + a is a multiple of up
                if (iy < 0 || iy >= p.in_h) continue;
                for (int c = c0; c < p.fu_w; c += p.up) {
                    const int ix = (base_x + c) / p.up;
                    if (ix < 0 || ix >= p.in_w) continue;
                    u += wu[a * p.fu_w + c] * (to_acc(xp[iy * p.in_w + ix]) + b);
                }
            }
            u *= up_gain;
            // torch's leaky_relu passes the gradient unscaled only where its input is > 0.
            A s = (u > A(0) ? u : u * slope) * gain;
            uint8_t state = u > A(0) ? 1 : 0;
            if (clamped) {
                if (!(s >= -clamp && s <= clamp)) state = 2;  // torch.clamp's gradient is 0 outside the range
                s = s < -clamp ? -clamp : (s > clamp ? clamp : s);
            }
            v[i] = s;
            mp[int64_t(Y) * p.mid_w + X] = state;
        }
        __syncthreads();

        // Stage 2: downsample from shared memory.
        for (int i = threadIdx.x; i < th * tw; i += blockDim.x) {
            const int ly = i / tw, lx = i % tw;
            const A* vp = v + ly * p.down * region_w + lx * p.down;
            A sum = A(0);
            for (int a = 0; a < p.fd_h; ++a)
                for (int c = 0; c < p.fd_w; ++c) sum += wd[a * p.fd_w + c] * vp[a * region_w + c];
            y[(plane * p.out_h + oy0 + ly) * p.out_w + ox0 + lx] = from_acc<T, A>(sum);
        }
        __syncthreads();  // the next plane reuses the shared buffer
    }
}

template <typename T> cudaError_t launch(const FilteredLreluParams& p, cudaStream_t stream) {
    using A = typename AccType<T>::type;
    // The largest square tile (in outputs) whose region fits in shared memory.
    int tile = 16;
    auto bytes = [&](int t) { return size_t((t - 1) * p.down + p.fd_h) * ((t - 1) * p.down + p.fd_w) * sizeof(A); };
    while (tile > 1 && bytes(tile) > size_t(kFilteredLreluMaxShared)) tile /= 2;
    if (bytes(tile) > size_t(kFilteredLreluMaxShared)) return cudaErrorInvalidValue;
    const dim3 grid((p.out_w + tile - 1) / tile, (p.out_h + tile - 1) / tile,
                    static_cast<unsigned int>(std::min<int64_t>(p.planes, 65535)));
    filtered_lrelu_kernel<T><<<grid, kThreads, bytes(tile), stream>>>(p, tile, tile);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_filtered_lrelu(const FilteredLreluParams& p, DType dtype, cudaStream_t stream) {
    if (p.planes * p.out_h * p.out_w == 0) return cudaSuccess;
    switch (dtype) {
        case DType::kFloat32: return launch<float>(p, stream);
        case DType::kFloat16: return launch<__half>(p, stream);
        case DType::kFloat64: return launch<double>(p, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace ganforge
