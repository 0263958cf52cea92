// Python binding of the bias_act kernel: argument checks, output allocation, launch on the current stream.

#include "bias_act.h"
#include "binding.h"

namespace ganforge {

// Returns clamp(f(x + b) * gain) for order 0, or g * f^(order)(x + b) * gain * clamp mask for order 1 and 2.
torch::Tensor bias_act(torch::Tensor x, std::optional<torch::Tensor> b, std::optional<torch::Tensor> g,
                       int64_t dim, int64_t act, int64_t order, double alpha, double gain, double clamp) {
    check_input(x, x, "x");
    TORCH_CHECK(0 <= dim && dim < std::max<int64_t>(x.dim(), 1), "dim out of range");
    TORCH_CHECK(0 <= order && order <= 2, "order must be 0, 1 or 2");
    TORCH_CHECK(0 <= act && act <= static_cast<int64_t>(Act::kSwish), "unknown activation id");
    TORCH_CHECK(order == 0 || (g.has_value() && g->defined()), "order 1 and 2 need the incoming gradient g");
    const at::cuda::CUDAGuard guard(x.device());

    BiasActParams p{};
    p.x = x.data_ptr();
    p.numel = x.numel();
    p.inner = 1;
    for (int64_t i = dim + 1; i < x.dim(); ++i) p.inner *= x.size(i);
    p.channels = x.dim() > 0 ? x.size(dim) : 1;
    if (b.has_value() && b->defined()) {
        check_input(*b, x, "b");
        TORCH_CHECK(b->dim() == 1 && b->numel() == p.channels, "b must be 1-D with x.shape[dim] elements");
        TORCH_CHECK(b->scalar_type() == x.scalar_type(), "b must have x's dtype");
        p.b = b->data_ptr();
    }
    if (order > 0) {
        check_input(*g, x, "g");
        TORCH_CHECK(g->sizes() == x.sizes() && g->scalar_type() == x.scalar_type(), "g must match x");
        p.g = g->data_ptr();
    }
    torch::Tensor y = torch::empty(x.sizes(), x.options());
    p.y = y.data_ptr();
    p.act = static_cast<int>(act);
    p.order = static_cast<int>(order);
    p.alpha = alpha;
    p.gain = gain;
    p.clamp = clamp;
    check_launch(launch_bias_act(p, to_dtype(x), at::cuda::getCurrentCUDAStream()), "bias_act");
    return y;
}

}  // namespace ganforge

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &ganforge::bias_act, "Fused bias, activation, gain and clamp (or a derivative)");
}
