// Python binding of the upfirdn2d kernel: argument checks, output allocation, launch on the current stream.

#include "binding.h"
#include "upfirdn2d.h"

namespace ganforge {

// x: [N, C, H, W]; w: [fh, fw] correlation weights (float32, float64 for a float64 x). Padding is
// (x_left, x_right, y_top, y_bottom); the output is [N, C, (H*upy + py0 + py1 - fh) / downy + 1, ...].
torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor w, int64_t upx, int64_t upy, int64_t downx, int64_t downy,
                        int64_t px0, int64_t px1, int64_t py0, int64_t py1, double gain) {
    check_input(x, x, "x");
    check_input(w, x, "w");
    TORCH_CHECK(x.dim() == 4, "x must be [N, C, H, W]");
    TORCH_CHECK(w.dim() == 2, "w must be [fh, fw]");
    const auto acc = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
    TORCH_CHECK(w.scalar_type() == acc, "w must be ", acc, " for x of dtype ", x.scalar_type());
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "up/down factors must be >= 1");
    const int64_t in_h = x.size(2), in_w = x.size(3), fh = w.size(0), fw = w.size(1);
    const int64_t padded_h = in_h * upy + py0 + py1, padded_w = in_w * upx + px0 + px1;
    TORCH_CHECK(padded_h >= fh && padded_w >= fw, "output would be empty");
    const int64_t out_h = (padded_h - fh) / downy + 1, out_w = (padded_w - fw) / downx + 1;
    TORCH_CHECK(x.numel() < (int64_t(1) << 31) && out_h * out_w < (int64_t(1) << 31), "images are too large");
    const at::cuda::CUDAGuard guard(x.device());

    torch::Tensor y = torch::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
    UpFirDn2dParams p{};
    p.x = x.data_ptr();
    p.w = w.data_ptr();
    p.y = y.data_ptr();
    p.planes = x.size(0) * x.size(1);
    p.in_h = static_cast<int>(in_h);
    p.in_w = static_cast<int>(in_w);
    p.out_h = static_cast<int>(out_h);
    p.out_w = static_cast<int>(out_w);
    p.upx = static_cast<int>(upx);
    p.upy = static_cast<int>(upy);
    p.downx = static_cast<int>(downx);
    p.downy = static_cast<int>(downy);
    p.px0 = static_cast<int>(px0);
    p.py0 = static_cast<int>(py0);
    p.fw = static_cast<int>(fw);
    p.fh = static_cast<int>(fh);
    p.gain = gain;
    check_launch(launch_upfirdn2d(p, to_dtype(x), at::cuda::getCurrentCUDAStream()), "upfirdn2d");
    return y;
}

}  // namespace ganforge

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &ganforge::upfirdn2d, "Upsample, pad, FIR-filter and downsample");
}
