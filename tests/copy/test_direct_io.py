"""O_DIRECT writes: aligned runs bypass the page cache, everything else is buffered,
and the bytes on disk are the same either way (on ext4 here, and on a ramfs, which
refuses O_DIRECT)."""
from __future__ import annotations

import os

from image_handlers.copy.buffers import ALIGN, Buffer
from image_handlers.copy.direct_io import DataFile

MiB = 1 << 20


def _fill(buffer: Buffer) -> bytes:
    data = (os.urandom(64) * (len(buffer.view) // 64 + 1))[:len(buffer.view)]
    buffer.view[:] = data
    return data


def test_buffers_are_page_aligned():
    import ctypes
    for size in (4096, 65536, 1 * MiB + 4096):
        buffer = Buffer.allocate(size)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buffer.view))
        assert address % ALIGN == 0 and len(buffer.view) == size


def _write_and_read(directory, pieces, direct=True):
    """Write (offset, view) pieces through a DataFile; return file bytes and it."""
    path = os.path.join(directory, 'f')
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        data = DataFile(fd, direct=direct)
        for offset, view in pieces:
            data.pwrite(view, offset)
        data.close()
        size = max(o + len(v) for o, v in pieces)
        return os.pread(fd, size, 0), data
    finally:
        os.close(fd)


def test_aligned_runs_go_direct_heads_and_tails_buffered(tmp_path):
    buffer = Buffer.allocate(1 * MiB)
    content = _fill(buffer)
    # an aligned buffer; then a piece whose memory is 3996 bytes past a page and
    # whose file offset is 100 bytes past one: no part of it is aligned in both
    odd = buffer.view[ALIGN - 100:3 * ALIGN + 50]
    got, data = _write_and_read(tmp_path, [(0, buffer.view), (2 * MiB + 100, odd)])
    assert got[:MiB] == content
    assert got[2 * MiB + 100:] == bytes(odd)
    assert data.direct_bytes == 1 * MiB     # the aligned buffer only


def test_odd_offset_with_matching_memory_alignment_splits(tmp_path):
    buffer = Buffer.allocate(4 * ALIGN)
    _fill(buffer)
    piece = buffer.view[100:4 * ALIGN - 10]     # memory offset 100, file offset 100
    got, data = _write_and_read(tmp_path, [(100, piece)])
    assert got[100:] == bytes(piece)
    # head [100, 4096) and tail [4*4096-4096, ...) buffered; the middle direct
    assert data.direct_bytes == 2 * ALIGN


def test_file_system_without_o_direct_is_written_buffered(tmpfs):
    buffer = Buffer.allocate(256 * 1024)
    content = _fill(buffer)
    got, data = _write_and_read(tmpfs(fstype='ramfs'), [(0, buffer.view)])
    assert got == content
    assert data.direct_bytes == 0


def test_direct_io_off(tmp_path):
    buffer = Buffer.allocate(256 * 1024)
    content = _fill(buffer)
    got, data = _write_and_read(tmp_path, [(0, buffer.view)], direct=False)
    assert got == content and data.direct_bytes == 0
