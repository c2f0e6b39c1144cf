"""The pipeline: reader -> hasher(s) -> writer, one thread each.

Socket reads, hashlib updates, signature verifier updates and os.pwrite on large
buffers all release the GIL, so the stages overlap on the host's cores: the copy
runs at the speed of its slowest stage (usually a hash) instead of their sum. The
image hash and the signature's digest are two stages in a row, so a signed image
is verified in the same pass as it is copied, at the speed of the slower digest.

Large buffers are preallocated once and travel through queues; nothing is
allocated per chunk. A buffer goes reader -> hasher(s) -> writer -> free pool,
in order, and nobody touches it between: the bytes written are exactly the
bytes hashed. Errors travel in-band behind the data read before them, so
when ``pump`` raises, every byte received was hashed and written and the
caller's offset is exact.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

from image_handlers import exceptions
from image_handlers.copy.buffers import ALIGN, Buffer, BufferPool
from image_handlers.copy.cancel import CancelToken
from image_handlers.copy.ratelimit import TokenBucket
from image_handlers.copy.source import Stream, abort_stream

Hash = Callable[[memoryview], None]
Write = Callable[[Buffer, int], None]
_EOF = object()
_HALT = None


def pump(stream: Stream, pool: BufferPool, hashes: Sequence[Hash], write: Write,
         cancel: CancelToken, limiter: TokenBucket | None = None,
         description: str = '') -> None:
    """Read ``stream`` to its end; each of ``hashes`` (a stage each, in order) on
    ``buffer.view[:n]``, then ``write(buffer, n)``, every buffer, in order.
    ``write`` runs on the calling thread.

    A stream starting at an odd byte (a resume) fills its first buffer from as
    far into the buffer's first page as that byte is into its page of the file:
    memory and file stay aligned together, and every later buffer starts on a
    page boundary of both, as O_DIRECT wants them."""
    free: queue.SimpleQueue = queue.SimpleQueue()
    read_q: queue.SimpleQueue = queue.SimpleQueue()
    for item in pool.buffers:
        free.put(item)
    step = limiter.slice_size(pool.size) if limiter else pool.size
    threads = [threading.Thread(target=_read, name=f'copy-reader {description}',
                                args=(stream, free, read_q, step, limiter, cancel,
                                      description), daemon=True)]
    write_q = read_q
    for number, hash_ in enumerate(hashes):
        inp, write_q = write_q, queue.SimpleQueue()
        threads.append(threading.Thread(target=_hash,
                                        name=f'copy-hasher{number} {description}',
                                        args=(hash_, inp, write_q), daemon=True))
    with cancel.aborting(lambda: abort_stream(stream)):
        for thread in threads:
            thread.start()
        try:
            while True:
                item = write_q.get()
                if item is _EOF:
                    return
                if isinstance(item, BaseException):
                    raise item
                buffer, n = item
                write(buffer, n)
                free.put(buffer.whole)
        finally:
            free.put(_HALT)
            read_q.put(_HALT)
            if threads[0].is_alive():
                abort_stream(stream)
            for thread in threads:
                thread.join()


def _read(stream: Stream, free: queue.SimpleQueue, out: queue.SimpleQueue,
          step: int, limiter: TokenBucket | None, cancel: CancelToken,
          description: str) -> None:
    skip = stream.start % ALIGN      # the first buffer starts that far into a page
    try:
        while True:
            buffer = free.get()
            if buffer is _HALT:
                return
            if skip:
                buffer, skip = buffer.skip(skip), 0
            n, end = _fill(stream, buffer.view, step, limiter, cancel, description)
            if n:
                out.put((buffer, n))
            if end is not None:
                out.put(end)
                return
    except BaseException as exc:  # handed on to the writing thread
        out.put(exc)


def _hash(hash_: Hash, inp: queue.SimpleQueue, out: queue.SimpleQueue) -> None:
    try:
        while True:
            item = inp.get()
            if item is _HALT:
                out.put(_HALT)      # the next stage stops too
                return
            if item is not _EOF and not isinstance(item, BaseException):
                buffer, n = item
                hash_(buffer.view[:n])
            out.put(item)
            if item is _EOF or isinstance(item, BaseException):
                return
    except BaseException as exc:
        out.put(exc)


def _fill(stream: Stream, view: memoryview, step: int, limiter: TokenBucket | None,
          cancel: CancelToken, description: str) -> tuple[int, object]:
    """Fill ``view`` (in ``step`` slices). Returns the bytes read and how the
    stream ended (``_EOF`` or the exception) or None if it goes on: bytes read
    before a failure are still delivered."""
    got, size = 0, len(view)
    try:
        while got < size:
            if cancel.cancelled:
                raise exceptions.CopyCancelled(f'copy of {description} was cancelled')
            n = stream.readinto(view[got:min(size, got + step)])
            if not n:
                return got, _EOF
            got += n
            if limiter is not None:
                limiter.consume(n)
    except Exception as exc:
        return got, exc
    return got, None
