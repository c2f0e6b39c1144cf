import os
import random

from image_handlers.copy.sparse import BLOCK_SIZE, SparseWriter


def _ranges(data, offset):
    writer = SparseWriter(-1)
    return list(writer.data_ranges(bytearray(data), len(data), offset)), writer.sparse_bytes


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


def test_unaligned_offset_keeps_partial_blocks():
    # at offset 100 the first 3996 bytes end a file block: written, not tested
    ranges, skipped = _ranges(bytes(10_000), 100)
    assert ranges == [(0, BLOCK_SIZE - 100), (2 * BLOCK_SIZE - 100, 10_000)]
    assert skipped == BLOCK_SIZE


def test_writes_leave_holes(tmp_path):
    data = bytearray(64 * BLOCK_SIZE)
    data[5 * BLOCK_SIZE + 7] = 9
    fd = os.open(tmp_path / 'f', os.O_RDWR | os.O_CREAT)
    try:
        writer = SparseWriter(fd)
        writer.write(data, memoryview(data), len(data), 0)
        os.ftruncate(fd, len(data))
        assert os.pread(fd, len(data), 0) == data
        assert os.fstat(fd).st_blocks * 512 < len(data)
        assert writer.sparse_bytes == 63 * BLOCK_SIZE
    finally:
        os.close(fd)
