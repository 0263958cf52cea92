"""Build the CUDA kernels of torch_utils/ops on first use, and fall back to the reference path if that fails.

Each kernel is compiled by torch.utils.cpp_extension.load (ninja) into its own folder under
$TORCH_EXTENSIONS_DIR (or torch's default build root), named by a hash of its sources, the GPU architectures,
and the torch, CUDA and Python versions, so a change to any of them builds afresh and an unchanged kernel
loads in a fraction of a second. A file lock makes ranks that start together build once and share it.

The kernels are off by default until they have passed the GPU tests (tests/test_ops_cuda.py); set
GANFORGE_CUDA_OPS=1 to use them. If a build fails, `get_kernel` warns once, naming the op, the reason and
the fix, and returns None for the rest of the process, so the ops run their reference paths.

CI checks that the kernels compile without a GPU:
    TORCH_CUDA_ARCH_LIST=9.0 python -m torch_utils.custom_ops --build-only
"""

import argparse
import contextlib
import functools
import hashlib
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

ENV_ENABLE = "GANFORGE_CUDA_OPS"  # "1" turns the kernels on
SOURCE_DIR = Path(__file__).parent / "ops" / "cuda"
_SHARED_FILES = ["common.h", "device.cuh", "binding.h"]

# Kernel name -> its own files in SOURCE_DIR (.cpp/.cu are compiled; headers only enter the hash).
KERNELS: dict[str, list[str]] = {
    "bias_act": ["bias_act.h", "bias_act.cu", "bias_act.cpp"],
    "upfirdn2d": ["upfirdn2d.h", "upfirdn2d.cu", "upfirdn2d.cpp"],
    "filtered_lrelu": ["filtered_lrelu.h", "filtered_lrelu.cu", "filtered_lrelu.cpp"],
}
_CXX_FLAGS = ["-O3"]
_NVCC_FLAGS = ["-O3", "-std=c++17"]


class KernelBuildWarning(UserWarning):
    """A CUDA kernel could not be built; its op uses the reference path for the rest of the process."""


def kernels_enabled() -> bool:
    """True when GANFORGE_CUDA_OPS=1 asks for the CUDA kernels."""
    return os.environ.get(ENV_ENABLE, "0").strip() == "1"


def kernel_for(name: str, *tensors: torch.Tensor) -> ModuleType | None:
    """The built kernel module for op `name` if the kernels are enabled and every tensor is on a CUDA device.

    Returns None (meaning: use the reference path) when the kernels are off, a tensor is on the CPU, or the
    build failed; the first failure warns once.
    """
    if not kernels_enabled() or not all(t.is_cuda for t in tensors) or not kernel_available(name):
        return None
    return get_kernel(name)


@torch.compiler.assume_constant_result
def kernel_available(name: str) -> bool:
    """Whether kernel `name` builds (building it on the first call); torch.compile records the answer as a
    constant instead of tracing into the build."""
    return get_kernel(name) is not None


def arch_list() -> str | None:
    """The GPU architectures to build for: $TORCH_CUDA_ARCH_LIST, else the current GPU's, else None."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return env
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return None


def source_paths(name: str) -> list[Path]:
    """Every file that kernel `name` is built from, headers included, in a fixed order."""
    assert name in KERNELS, f"unknown kernel {name!r}; choose one of {sorted(KERNELS)}"
    return [SOURCE_DIR / f for f in _SHARED_FILES + KERNELS[name]]


def build_key(name: str, arch: str | None, sources: list[Path] | None = None) -> str:
    """Hash of kernel `name`'s sources, the architectures and the torch/CUDA/Python versions (hex, 16 chars)."""
    h = hashlib.sha256()
    for path in sources if sources is not None else source_paths(name):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    versions = [torch.__version__, str(torch.version.cuda), sys.version.split()[0], str(arch)]
    h.update("|".join(versions + _CXX_FLAGS + _NVCC_FLAGS).encode())
    return h.hexdigest()[:16]


def build_root() -> Path:
    """$TORCH_EXTENSIONS_DIR, or torch's default extension folder."""
    from torch.utils import cpp_extension

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed); released by the OS if the process dies."""
    try:
        import fcntl
    except ImportError:  # Windows: torch's own lock inside cpp_extension.load still serializes the build
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _env(key: str, value: str | None) -> Iterator[None]:
    """Set (or, with None, leave) one environment variable for the duration of the block."""
    old = os.environ.get(key)
    if value is not None:
        os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def build(name: str, verbose: bool = False) -> ModuleType:
    """Compile (or load the cached build of) kernel `name` and return the module; raises on any failure."""
    from torch.utils import cpp_extension

    arch = arch_list()
    if arch is None:
        raise RuntimeError("no CUDA GPU is visible and TORCH_CUDA_ARCH_LIST is not set")
    key = build_key(name, arch)
    build_dir = build_root() / f"ganforge_{name}_{key}"
    with _file_lock(build_dir.with_name(build_dir.name + ".lock")):
        build_dir.mkdir(parents=True, exist_ok=True)
        # cpp_extension reads the architectures from the environment; ours pins them to what the key names.
        with _env("TORCH_CUDA_ARCH_LIST", arch):
            return cpp_extension.load(
                name=f"ganforge_{name}_{key}",  # unique per build, so two versions never clash in sys.modules
                sources=[str(p) for p in source_paths(name) if p.suffix in (".cpp", ".cu")],
                extra_include_paths=[str(SOURCE_DIR)],
                extra_cflags=_CXX_FLAGS,
                extra_cuda_cflags=_NVCC_FLAGS,
                build_directory=str(build_dir),
                verbose=verbose,
            )


def _short_reason(err: BaseException) -> str:
    """The first line of a build error that says what went wrong, shortened."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error", line, re.I) and "Error building extension" not in line]
    reason = (errors or lines or [type(err).__name__])[0]
    return reason if len(reason) <= 200 else reason[:197] + "..."


@functools.cache
def get_kernel(name: str) -> ModuleType | None:
    """Kernel `name`'s module, built on the first call; None after one warning if it cannot be built.

    Cached for the life of the process (functools.cache), so a failed build is never retried per call.
    """
    try:
        return build(name)
    except Exception as err:  # noqa: BLE001 - any failure (no nvcc, compiler error, ...) means: use the reference
        warnings.warn(
            f"Could not build the CUDA kernel for {name} ({_short_reason(err)}); {name} uses the slower "
            f"reference path for the rest of this process. Fix: install the CUDA toolkit that torch was built "
            f"with (CUDA {torch.version.cuda}; nvcc on PATH or CUDA_HOME set) and a host compiler it supports, "
            f"then see the full log with `python -m torch_utils.custom_ops --build-only`; or unset "
            f"{ENV_ENABLE} to stop trying.",
            KernelBuildWarning,
            stacklevel=2,
        )
        return None


def build_all(verbose: bool = True, names: list[str] | None = None) -> None:
    """Build every kernel, or those in `names` (for $TORCH_CUDA_ARCH_LIST without a GPU); raises on the first
    failure."""
    for name in names or list(KERNELS):
        start = time.time()
        print(f"Building {name} for TORCH_CUDA_ARCH_LIST={arch_list()} ...", flush=True)
        build(name, verbose=verbose)
        print(f"Built {name} in {time.time() - start:.0f} s into {build_root()}", flush=True)


def main() -> None:
    """Command line: `python -m torch_utils.custom_ops --build-only` compiles all kernels and exits."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-only", action="store_true", help="compile every kernel; exit 1 on any error")
    parser.add_argument("--quiet", action="store_true", help="do not print the compiler command lines")
    parser.add_argument(
        "--kernel", action="append", choices=list(KERNELS), help="build only this kernel (repeatable; default: all)"
    )
    args = parser.parse_args()
    if not args.build_only:
        parser.error("nothing to do; pass --build-only")
    try:
        build_all(verbose=not args.quiet, names=args.kernel)
    except Exception as err:  # noqa: BLE001 - report any failure as a non-zero exit for CI
        print(f"Kernel build failed: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
