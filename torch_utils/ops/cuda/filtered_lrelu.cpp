// Python binding of the filtered_lrelu kernel: argument checks, output allocation, launch on the current stream.

#include "binding.h"
#include "filtered_lrelu.h"

namespace ganforge {

// x: [N, C, H, W]; b: [C] in x's dtype; wu, wd: 2-D correlation weights (float32, float64 for a float64 x).
// Returns (y [N, C, out_h, out_w], mask [N, C, mid_h, mid_w] uint8) where mid is the part of the upsampled signal
// the outputs read: mid_h = (out_h - 1) * down + fd_h.
std::vector<torch::Tensor> filtered_lrelu(torch::Tensor x, torch::Tensor b, torch::Tensor wu, torch::Tensor wd,
                                          int64_t up, int64_t down, int64_t px0, int64_t px1, int64_t py0,
                                          int64_t py1, double gain, double slope, double clamp) {
    check_input(x, x, "x");
    check_input(b, x, "b");
    check_input(wu, x, "wu");
    check_input(wd, x, "wd");
    TORCH_CHECK(x.dim() == 4, "x must be [N, C, H, W]");
    TORCH_CHECK(b.dim() == 1 && b.numel() == x.size(1) && b.scalar_type() == x.scalar_type(),
                "b must be [C] in x's dtype");
    TORCH_CHECK(wu.dim() == 2 && wd.dim() == 2, "filters must be 2-D");
    const auto acc = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
    TORCH_CHECK(wu.scalar_type() == acc && wd.scalar_type() == acc, "filters must be ", acc);
    TORCH_CHECK(up >= 1 && down >= 1, "up and down must be >= 1");
    const int64_t in_h = x.size(2), in_w = x.size(3);
    const int64_t fu_h = wu.size(0), fu_w = wu.size(1), fd_h = wd.size(0), fd_w = wd.size(1);
    const int64_t up_h = in_h * up + py0 + py1 - fu_h + 1, up_w = in_w * up + px0 + px1 - fu_w + 1;
    TORCH_CHECK(up_h >= fd_h && up_w >= fd_w, "output would be empty");
    const int64_t out_h = (up_h - fd_h) / down + 1, out_w = (up_w - fd_w) / down + 1;
    const int64_t mid_h = (out_h - 1) * down + fd_h, mid_w = (out_w - 1) * down + fd_w;
    const size_t elem = acc == torch::kFloat64 ? 8 : 4;
    TORCH_CHECK(size_t(fd_h) * fd_w * elem <= size_t(kFilteredLreluMaxShared), "downsampling filter is too large");
    TORCH_CHECK(mid_h * mid_w < (int64_t(1) << 31) && x.numel() < (int64_t(1) << 31), "images are too large");
    const at::cuda::CUDAGuard guard(x.device());

    torch::Tensor y = torch::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
    // Zeroed: when down > fd the outputs skip some upsampled samples, and the backward pass reads the whole mask.
    torch::Tensor mask = torch::zeros({x.size(0), x.size(1), mid_h, mid_w}, x.options().dtype(torch::kUInt8));
    FilteredLreluParams p{};
    p.x = x.data_ptr();
    p.b = b.data_ptr();
    p.wu = wu.data_ptr();
    p.wd = wd.data_ptr();
    p.y = y.data_ptr();
    p.mask = mask.data_ptr<uint8_t>();
    p.planes = x.size(0) * x.size(1);
    p.channels = static_cast<int>(x.size(1));
    p.in_h = static_cast<int>(in_h);
    p.in_w = static_cast<int>(in_w);
    p.mid_h = static_cast<int>(mid_h);
    p.mid_w = static_cast<int>(mid_w);
    p.out_h = static_cast<int>(out_h);
    p.out_w = static_cast<int>(out_w);
    p.up = static_cast<int>(up);
    p.down = static_cast<int>(down);
    p.px0 = static_cast<int>(px0);
    p.py0 = static_cast<int>(py0);
    p.fu_w = static_cast<int>(fu_w);
    p.fu_h = static_cast<int>(fu_h);
    p.fd_w = static_cast<int>(fd_w);
    p.fd_h = static_cast<int>(fd_h);
    p.up_gain = double(up * up);
    p.gain = gain;
    p.slope = slope;
    p.clamp = clamp;
    check_launch(launch_filtered_lrelu(p, to_dtype(x), at::cuda::getCurrentCUDAStream()), "filtered_lrelu");
    return {y, mask};
}

}  // namespace ganforge

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("filtered_lrelu", &ganforge::filtered_lrelu, "Fused bias, upsampling, leaky ReLU, clamp, downsampling");
}
