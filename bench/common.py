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
