#!/usr/bin/env bash
# Compile the CUDA kernels of torch_utils/ops without a GPU, from PyPI packages alone, so that a kernel that no
# longer compiles fails CI. The CUDA compiler must match the CUDA version torch was built with.
set -euo pipefail
cd "$(dirname "$0")/.."

cuda=$(python -c "import torch; print(torch.version.cuda or '')")
if [ -z "$cuda" ]; then
    echo "torch has no CUDA support; skipping the kernel build check"
    exit 0
fi
major=${cuda%%.*}
pip install --quiet "nvidia-cuda-nvcc==$cuda.*" "nvidia-cuda-crt==$cuda.*" "nvidia-cuda-cccl==$cuda.*" \
    "nvidia-nvvm==$cuda.*"

site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
export CUDA_HOME="$site/nvidia/cu$major"
export PATH="$CUDA_HOME/bin:$PATH"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
# The wheels ship only the versioned runtime library; the linker looks for the unversioned name.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lib"
ln -s "$CUDA_HOME/lib/libcudart.so.$major" "$tmp/lib/libcudart.so"
export LIBRARY_PATH="$tmp/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
# A fresh build folder: CI caches nothing between runs, and a stale build must not hide a broken source.
export TORCH_EXTENSIONS_DIR="$tmp/extensions"

start=$(date +%s)
python -m torch_utils.custom_ops --build-only --quiet
echo "Kernel build took $(($(date +%s) - start)) s"
