import os
import random

from image_handlers.copy.buffers import Buffer
from image_handlers.copy.direct_io import DataFile
from image_handlers.copy.sparse import BLOCK_SIZE, SparseWriter


def _ranges(data, offset, base=0):
    writer = SparseWriter(lambda view, at: None)
    buf = bytearray(base) + bytearray(data)     # ranges are relative to base
    return list(writer.data_ranges(buf, len(data), offset, base)), writer.sparse_bytes


def test_only_whole_aligned_zero_blocks_are_skipped():
    rng = random.Random(3)
    for _ in range(200):
        n = rng.randint(0, 300_000)
        offset = rng.randint(0, 3 * BLOCK_SIZE)
        data = bytearray(n)
        for _ in range(rng.randint(0, 20)):
            pos = rng.randint(0, max(0, n - 1))
            end = min(n, pos + rng.randint(1, 10_000))
            data[pos:end] = b'\x01' * (end - pos)
        data = bytes(data)
        ranges, skipped = _ranges(data, offset)
        rebuilt = bytearray(n)
        for start, end in ranges:
            rebuilt[start:end] = data[start:end]
        assert rebuilt == data
        assert sum(end - start for start, end in ranges) + skipped == n
        prev = 0
        for start, end in ranges + [(n, n)]:
            gap = start - prev            # a skipped gap is whole aligned blocks
            assert gap % BLOCK_SIZE == 0
            assert gap == 0 or (offset + prev) % BLOCK_SIZE == 0
            prev = end


def test_all_zero_and_no_zero_buffers():
    assert _ranges(bytes(8 * BLOCK_SIZE), 0) == ([], 8 * BLOCK_SIZE)
    data = os.urandom(8 * BLOCK_SIZE).replace(b'\0', b'\1')
    assert _ranges(data, 0) == ([(0, len(data))], 0)


def test_ranges_are_relative_to_the_buffer_base():
    data = bytearray(4 * BLOCK_SIZE)
    data[BLOCK_SIZE + 1] = 7
    assert _ranges(data, 0, base=123) == _ranges(data, 0) == (
        [(BLOCK_SIZE, 2 * BLOCK_SIZE)], 3 * BLOCK_SIZE)


def test_unaligned_offset_keeps_partial_blocks():
    # at offset 100 the first 3996 bytes end a file block: written, not tested
    ranges, skipped = _ranges(bytes(10_000), 100)
    assert ranges == [(0, BLOCK_SIZE - 100), (2 * BLOCK_SIZE - 100, 10_000)]
    assert skipped == BLOCK_SIZE


def test_writes_leave_holes(tmp_path):
    buffer = Buffer.allocate(64 * BLOCK_SIZE)
    buffer.view[5 * BLOCK_SIZE + 7] = 9
    fd = os.open(tmp_path / 'f', os.O_RDWR | os.O_CREAT)
    try:
        data = DataFile(fd)
        writer = SparseWriter(data.pwrite)
        writer.write(buffer, len(buffer.view), 0)
        data.close()
        os.ftruncate(fd, len(buffer.view))
        assert os.pread(fd, len(buffer.view), 0) == bytes(buffer.view)
        assert os.fstat(fd).st_blocks * 512 < len(buffer.view)
        assert writer.sparse_bytes == 63 * BLOCK_SIZE
        assert data.direct_bytes == BLOCK_SIZE   # the one data block: aligned
    finally:
        os.close(fd)
