"""One pass over an image's bytes that proves an Expectation: the image hash and
the signature verifier are fed the same buffers, each on a thread of its own
(hashlib and cryptography both release the GIL), so the pass runs at the speed of
the slower of the two, not their sum."""
from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable

from image_handlers import exceptions
from image_handlers.trust import signature as signatures
from image_handlers.trust.expectation import Expectation

_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                              thread_name_prefix='signature')


class DigestPass:
    def __init__(self, expectation: Expectation) -> None:
        self.expectation = expectation
        self.hasher = expectation.checksum.new() if expectation.checksum else None
        self.verifier = (expectation.signature.verifier()
                         if expectation.signature else None)
        self.bytes = 0

    @property
    def updates(self) -> list[Callable[[memoryview], None]]:
        """The update functions, one per digest (a pipeline gives each a stage)."""
        return [u.update for u in (self.hasher, self.verifier) if u is not None]

    def feed(self, view: memoryview) -> None:
        """Both digests of ``view``, concurrently; returns when both are done."""
        self.bytes += len(view)
        if self.hasher is not None and self.verifier is not None:
            pending = _POOL.submit(self.verifier.update, view)
            try:
                self.hasher.update(view)
            finally:
                pending.result()
        elif self.hasher is not None:
            self.hasher.update(view)
        elif self.verifier is not None:
            self.verifier.update(view)

    def finish(self, where: str) -> str:
        """ChecksumMismatch or SignatureMismatch unless the bytes fed are the
        image's; else what was proven (for results and logs)."""
        expected = self.expectation.checksum
        if self.hasher is not None:
            actual = self.hasher.hexdigest()
            if actual != expected.hexdigest:
                raise exceptions.ChecksumMismatch(
                    f'image {self.expectation.image_id}: {where} has '
                    f'{expected.algo} {actual}, the image {expected.hexdigest}: not '
                    f'the image\'s data')
        if self.verifier is not None:
            signatures.check(self.verifier, f'image {self.expectation.image_id}: {where}')
        return self.expectation.describe() + ' verified'


class _FdStream:
    """The first ``size`` bytes of an open file, read with pread (the file's
    offset is untouched), as the copy pipeline reads a source."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.pos, self.start, self.total = fd, 0, 0, size

    def readinto(self, buf: memoryview) -> int:
        want = min(len(buf), self.total - self.pos)
        n = os.preadv(self.fd, [buf[:want]], self.pos) if want > 0 else 0
        self.pos += n
        return n

    def close(self) -> None:
        pass


def feed_stream(stream, digests: DigestPass, cancel, description: str,
                buffer_size: int = 8 << 20) -> int:
    """Read ``stream`` (a copy-engine Stream) to its end through the copy engine's
    pipeline with nothing to write: the reads, the hash and the signature's
    digest overlap on threads of their own. Returns the bytes read; the stream is
    closed."""
    from image_handlers.copy.buffers import BufferPool
    from image_handlers.copy.pipeline import pump
    read = 0

    def count(buffer, n: int) -> None:
        nonlocal read
        read += n
    try:
        pump(stream, BufferPool.create(4, buffer_size), digests.updates, count,
             cancel, description=description)
    finally:
        stream.close()
    return read


def feed_fd(fd: int, size: int, digests: DigestPass, cancel, description: str,
            buffer_size: int = 8 << 20) -> int:
    """The first ``size`` bytes of an open file through ``feed_stream``; returns
    the bytes read (fewer than ``size`` if the file ended)."""
    return feed_stream(_FdStream(fd, size), digests, cancel, description, buffer_size)
