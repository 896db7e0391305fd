"""Keep freed CPU memory in the process, so that each request does not page its activations in again.

Why: PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves every block over 128 KiB
by a fresh ``mmap`` and returns it to the system when it is freed, so each layer of stage 2's crop tower
(48 crops: up to 11 MB a feature map) gets new pages from the kernel, zeroed and faulted in one by one,
on every request. Raising glibc's mmap threshold to its maximum (32 MiB on 64-bit) and its trim
threshold above that keeps those blocks in the heap for the next request: stage 2 of a bundled request
about 1.25x faster, measured side by side (``python -m benchmarks.latency``, the allocator line). The
cost is that the process keeps what it freed instead of returning it, bounded by its high-water mark.

The app and the command line call :func:`retain_freed_memory` at start; the library never changes the
allocator on import. Anywhere but glibc (macOS, musl, Windows) both functions do nothing and say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
GLIBC_INITIAL_THRESHOLD = 128 * 1024  # both thresholds' initial values
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's cap on 64-bit systems (HEAP_MAX_SIZE / 2)
RETAINED_TRIM_THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def retain_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 32 MiB for reuse; True when the allocator took the setting."""
    return _set_thresholds(MAX_MMAP_THRESHOLD, RETAINED_TRIM_THRESHOLD)


def release_freed_memory() -> bool:
    """glibc's initial thresholds again (128 KiB each), with what the heap holds returned to the system;
    True when the allocator took the setting. (Before any setting glibc moves the mmap threshold up by
    itself as blocks are freed; set explicitly, it stays where it is put.)"""
    if not _set_thresholds(GLIBC_INITIAL_THRESHOLD, GLIBC_INITIAL_THRESHOLD):
        return False
    _glibc().malloc_trim(0)
    return True


def _set_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))


def trim_freed_memory() -> bool:
    """Return what the heap holds freed to the system now, thresholds unchanged (glibc's ``malloc_trim``):
    for a server that has gone idle, so that memory kept for the next request does not stay resident
    for good. True when glibc released something."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
