"""CPU memory allocator settings that make training steps faster.

A Conv-4 training step on a batch of a few hundred Omniglot images allocates activations and gradients of
~100 MB each. glibc's ``malloc`` serves blocks that large with a fresh ``mmap`` and returns them to the
operating system on ``free``, so every step pays page faults (and the kernel's zeroing) on every page of
every large tensor again: ~80,000-100,000 minor page faults per ProtoNets 200-way step on our 2-core
CPU, a third of the step. ``retain_freed_memory()`` tells glibc to serve large blocks from its heap and keep
freed memory there, so later steps reuse pages already mapped (the allocator tuning PyTorch's CPU
performance guide reaches with jemalloc / tcmalloc, without a preloaded library): 0 faults and 1.44x faster
steps there (``benchmarks/bench_allocator.py``); no gain for steps with small tensors (MAML on 2 tasks).

The cost: the process keeps its peak heap size until it exits, instead of shrinking after a large step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# glibc's defaults, restored by retain_freed_memory(False)
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def retain_freed_memory(enable: bool = True) -> bool:
    """Keep freed CPU memory in the process heap (glibc), or restore glibc's defaults with ``False``.

    Process-wide; affects allocations made after the call. Returns ``True`` when the setting was applied,
    ``False`` where the C library is not glibc (macOS, Windows, musl): nothing changes there.
    """
    libc = _glibc()
    if libc is None:
        return False
    trim, mmap_max = (2**31 - 1, 0) if enable else (_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX)
    applied = libc.mallopt(_M_TRIM_THRESHOLD, trim) == 1
    applied = libc.mallopt(_M_MMAP_MAX, mmap_max) == 1 and applied
    return applied
