// Declarations shared by the host bindings (*.cpp, compiled by the host compiler) and the kernels (*.cu, nvcc).
// Nothing here includes torch, so the .cu files compile quickly.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace ganforge {

// Element types the kernels are instantiated for; the arithmetic runs in float (double for kFloat64).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kFloat64 = 2 };

}  // namespace ganforge
