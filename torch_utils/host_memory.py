"""Keep freed host memory in the process (glibc), so that CPU training does not fault its pages in over and over.

glibc's malloc serves blocks above a threshold (128 KiB at first, raised as such blocks are freed, up to 32 MiB)
with fresh mmap() calls and gives them back on free(); it also returns the top of the heap to the system once
more than 128 KiB is free there. A training step on the CPU allocates and frees the same activation-sized tensors
(megabytes each) every pass, so each one is faulted in page by page again: on a 2-core machine that was half of
StyleGAN3's filtered_lrelu backward and 1028 against 841 ms for a 32x32 StyleGAN3-T step, while a 32x32 StyleGAN2
step, with smaller tensors, gains 2 % at most (docs/performance.md). Fixing the mmap threshold at its maximum and
never trimming keeps the freed blocks for reuse; the process then holds on to its peak working set, which it
reaches every step anyway.
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit systems.
NEVER_TRIM = 2**31 - 1  # The largest value mallopt takes (an int).


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks of up to 32 MiB in the process; True when it took effect.

    Does nothing (False) off Linux, without glibc, or when GLIBC_TUNABLES already sets malloc options: those are
    the user's choice. Allocators preloaded instead of glibc's (jemalloc, tcmalloc) are not affected either way.
    """
    if not sys.platform.startswith("linux") or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
