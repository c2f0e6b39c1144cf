"""What every benchmark here measures the same way."""
from __future__ import annotations

import hashlib
import os
import time

MiB = 1 << 20


def hashlib_speed(size: int = 512 * MiB, algo: str = 'sha512') -> float:
    """Bytes/s of ``algo`` on one core over data not already in the CPU caches:
    the bound of any verified copy on this CPU, sampled in the same run."""
    buf = memoryview(bytearray(os.urandom(size)))
    h = hashlib.new(algo)
    t0 = time.perf_counter()
    for i in range(0, size, 8 * MiB):
        h.update(buf[i:i + 8 * MiB])
    return size / (time.perf_counter() - t0)


def prime_memory(nbytes: int) -> None:
    """Touch, then free, ``nbytes`` of memory just before a timed run.

    This VM (virtio_balloon, DAMON) hands freed memory back to the host within
    seconds, and the next first touch of it costs up to 2.7 s of system time per
    GiB (measured: the same 1 GiB copy ran at 370 MiB/s after an 8 s pause and at
    470-710 MiB/s right after this priming). Without it, that cost lands on
    whichever run happens to follow a pause, not on the code being measured.
    """
    buf = bytearray(nbytes)
    buf[::4096] = b'\x01' * len(range(0, nbytes, 4096))
    del buf
