"""pmp.allocator: with freed blocks retained, a block of several MB comes from the heap instead of a fresh
mmap (the pages a request reuses instead of faulting in again); elsewhere than glibc nothing changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import pmp.allocator as allocator

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: in this one, free chunks that earlier tests left in the heap can serve a
# block whatever the thresholds say.
PROBE = """
import ctypes, json
import torch
import pmp.allocator as allocator

FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]  # glibc's struct mallinfo2; hblkhd: mmapped bytes


libc = allocator._glibc()
libc.mallinfo2.restype = MallInfo2


def mmapped_while_holding(num_bytes):
    before = libc.mallinfo2().hblkhd
    block = torch.ones(num_bytes // 4)
    during = libc.mallinfo2().hblkhd
    del block
    return during - before


size = 8 * 1024 * 1024
released = [allocator.release_freed_memory(), mmapped_while_holding(size), mmapped_while_holding(size)]
retained = [allocator.retain_freed_memory(), mmapped_while_holding(size), mmapped_while_holding(size)]
print(json.dumps({"size": size, "released": released, "retained": retained}))
"""


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")
def test_retained_blocks_come_from_the_heap_and_released_ones_from_mmap() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, check=True)
    probe = json.loads(out.stdout)
    size = probe["size"]
    took, first, second = probe["released"]
    assert took and first >= size and second >= size  # over 128 KiB: a fresh mapping each time, unmapped at free
    took, first, second = probe["retained"]
    assert took and second == 0  # the first block of that size grows the heap; the next one reuses it


def test_without_glibc_nothing_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.retain_freed_memory() is False
    assert allocator.release_freed_memory() is False
