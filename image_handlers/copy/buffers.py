"""The copy's buffers: allocated once, page-aligned, reused for every read.

Aligned so the writer can hand them to O_DIRECT as they are (see direct_io);
bytearrays (not mmaps) so the zero-block test keeps ``bytearray.startswith``'s
memcmp speed (mmap.find and memoryview comparison were 20-40x slower on zero
blocks, measured).
"""
from __future__ import annotations

import ctypes
import dataclasses

ALIGN = 4096    # page size; a multiple of every logical block size O_DIRECT needs


@dataclasses.dataclass(frozen=True)
class Buffer:
    """``len(view)`` bytes of ``raw`` from ``raw[base]``, a page-aligned address."""

    raw: bytearray
    base: int
    view: memoryview
    whole_buffer: 'Buffer | None' = None    # set on a window made by skip()

    def skip(self, n: int) -> 'Buffer':
        """The same memory from byte ``n`` on. Data for a file offset that is
        ``n`` bytes past a page lands ``n`` bytes past a page in memory, so both
        stay aligned together (what O_DIRECT needs)."""
        return Buffer(self.raw, self.base + n, self.view[n:], self.whole)

    @property
    def whole(self) -> 'Buffer':
        """The pool's buffer this one is (a window of)."""
        return self.whole_buffer or self

    @classmethod
    def allocate(cls, size: int) -> 'Buffer':
        raw = bytearray(size + ALIGN)
        address = ctypes.addressof(ctypes.c_char.from_buffer(raw))
        base = -address % ALIGN
        return cls(raw, base, memoryview(raw)[base:base + size])


@dataclasses.dataclass
class BufferPool:
    buffers: list[Buffer]

    @classmethod
    def create(cls, count: int, size: int) -> 'BufferPool':
        return cls([Buffer.allocate(size) for _ in range(count)])

    @property
    def size(self) -> int:
        return len(self.buffers[0].view)
