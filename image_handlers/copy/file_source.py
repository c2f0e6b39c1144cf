"""LocalFileSource: a file this host already holds, read instead of the network.

The copy engine uses it for one case: a copy of an image waited for the image's
lock while another copy of the same image published a *different* target (16
requests, 16 disks). The published file is read instead of transferring the
image again, so the source serves the image once per host. It is only used while
it is still the very file that was published (device, inode, size, mtime), and
the engine's hash check over every byte is, as always, the final word.
"""
from __future__ import annotations

import os
from typing import Any

from image_handlers import exceptions


class LocalFileSource:
    def __init__(self, path: str, stat_key: tuple[int, int, int, int],
                 description: str) -> None:
        self.path = path
        self.stat_key = stat_key        # (st_dev, st_ino, st_size, st_mtime_ns)
        self.url = f'file://{path}'
        self.description = description

    def identity(self) -> dict[str, Any]:
        dev, ino, size, mtime_ns = self.stat_key
        return {'url': self.url, 'dev': dev, 'ino': ino, 'size': size,
                'mtime_ns': mtime_ns}

    def open(self, offset: int) -> 'FileStream':
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise exceptions.SourceError(
                f'{self.description}: cannot open {self.path}: {exc.strerror}') from exc
        st = os.fstat(fd)
        if stat_key(st) != self.stat_key:
            os.close(fd)
            raise exceptions.SourceError(
                f'{self.description}: {self.path} changed since it was published')
        return FileStream(fd, offset, st.st_size)


class FileStream:
    def __init__(self, fd: int, start: int, total: int) -> None:
        self.fd = fd
        self.start = start
        self.total = total
        self.pos = start

    def readinto(self, buf: memoryview) -> int:
        n = os.preadv(self.fd, [buf], self.pos)
        self.pos += n
        return n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
