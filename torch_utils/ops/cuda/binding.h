// Host-side helpers for the Python bindings (*.cpp): dtype mapping and error checks.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "common.h"

namespace ganforge {

inline DType to_dtype(const torch::Tensor& t) {
    switch (t.scalar_type()) {
        case torch::kFloat32: return DType::kFloat32;
        case torch::kFloat16: return DType::kFloat16;
        case torch::kFloat64: return DType::kFloat64;
        default: TORCH_CHECK(false, "unsupported dtype ", t.scalar_type(), "; expected float16, float32 or float64");
    }
    return DType::kFloat32;
}

inline void check_input(const torch::Tensor& t, const torch::Tensor& like, const char* name) {
    TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
    TORCH_CHECK(t.device() == like.device(), name, " must be on the same device as x");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

inline void check_launch(cudaError_t err, const char* op) {
    TORCH_CHECK(err == cudaSuccess, op, " kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace ganforge
