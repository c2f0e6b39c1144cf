"""Writing received buffers to the partial file, leaving all-zero blocks as holes.

Disk images are mostly zeros; not writing them saves disk space and I/O. The
zero test must be cheap next to hashing: one byte per block is sampled (a
strided slice, one small copy per buffer) and only blocks whose first byte is 0
get the full ``bytearray.startswith`` test (a memcmp that stops at the first
difference). Blocks are aligned on file offsets so holes line up with the file
system's blocks, also after a resume at an odd offset.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from image_handlers.copy.buffers import Buffer

BLOCK_SIZE = 4096
_RUN_STEP = 16

WriteAt = Callable[[memoryview, int], None]


class SparseWriter:
    """Writes each buffer at its file offset; counts the zero bytes skipped.

    Skipping is only correct because the region past the current offset of the
    partial file is always a hole (the engine truncates to the offset before
    writing), and the engine extends the file to its final size at the end.
    """

    def __init__(self, write_at: WriteAt, sparse: bool = True,
                 block_size: int = BLOCK_SIZE):
        self.write_at = write_at
        self.sparse = sparse
        self.block_size = block_size
        self.sparse_bytes = 0
        self._zero = bytes(block_size)
        self._zero_run = bytes(block_size * _RUN_STEP)

    def write(self, buffer: Buffer, n: int, offset: int) -> None:
        """Write the first ``n`` bytes of ``buffer`` at ``offset``."""
        view = buffer.view
        if not self.sparse:
            self.write_at(view[:n], offset)
            return
        for start, end in self.data_ranges(buffer.raw, n, offset, buffer.base):
            self.write_at(view[start:end], offset + start)

    def data_ranges(self, buf: bytearray, n: int, offset: int,
                    base: int = 0) -> Iterator[tuple[int, int]]:
        """Yield the ``[start, end)`` ranges of ``buf[base:base + n]`` (relative to
        ``base``) that are not whole zero blocks, and count the skipped bytes."""
        bs = self.block_size
        first = min((-offset) % bs, n)            # unaligned head: always written
        full = (n - first) // bs
        limit = first + full * bs
        sample = buf[base + first:base + limit:bs]  # first byte of every full block
        run_start = 0
        pos = sample.find(0)
        while pos >= 0:
            i = first + pos * bs
            if buf.startswith(self._zero, base + i):
                end = self._zero_run_end(buf, base, i + bs, limit)
                if i > run_start:
                    yield run_start, i
                self.sparse_bytes += end - i
                run_start = end
                pos = (end - first) // bs
            else:
                pos += 1
            pos = sample.find(0, pos)
        if n > run_start:
            yield run_start, n

    def _zero_run_end(self, buf: bytearray, base: int, i: int, limit: int) -> int:
        """Extend a zero run in steps of ``_RUN_STEP`` blocks: long runs of zeros
        cost one memcmp per step instead of one Python call per block."""
        big = self._zero_run
        step = len(big)
        while i + step <= limit and buf.startswith(big, base + i):
            i += step
        return i
