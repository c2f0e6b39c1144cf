"""Read a disk through qemu at hash speed: qemu-nbd on a private socket (systemd
socket activation, so no port and no path to race for), read with libnbd.

Used to verify a LUN (read-only, straight from the target) and to fill an overlay
offline (through qemu's copy-on-read filter, so each block read is also written
into the overlay: one pass over the network fills and verifies)."""
from __future__ import annotations

import collections
import contextlib
import os
import signal
import time
from typing import Callable, Iterator

from image_handlers import exceptions
from image_handlers.copy.ratelimit import TokenBucket

try:  # Debian's python3-libnbd, linked into the virtualenvs (not on PyPI)
    import nbd
except ImportError:  # pragma: no cover - reported when used
    nbd = None

# qemu-nbd gets SIGTERM when the thread that started it dies (util-linux setpriv,
# always on Debian): a fill worker killed with SIGKILL before libnbd connected left
# it waiting for a first client for ever, holding the disk's image lock, and the
# resumed fill took that for a guest (found by tools/kill_trials.py). SIGTERM, not
# SIGKILL: qemu-nbd then closes the overlay cleanly, its qcow2 metadata written, so
# the resumed fill does not fetch again the clusters it had filled.
SETPRIV = '/usr/bin/setpriv'
_DIE_WITH_PARENT = ([SETPRIV, '--pdeathsig', 'TERM'] if os.path.exists(SETPRIV)
                    else [])
CHUNK = 4 << 20     # bytes per NBD read: large, and under qemu-nbd's 32 MiB limit
WINDOW = 4          # reads in flight: measured 340 MiB/s with 1, 466-498 with 4
# Seconds qemu-nbd may take to open a disk (an iSCSI login takes ~0.1 s here):
# callers that know the deployment's read_timeout should pass it.
CONNECT_TIMEOUT = 15.0


@contextlib.contextmanager
def served(objects: list[str], image_opts: str, read_only: bool,
           description: str, timeout: float = CONNECT_TIMEOUT) -> Iterator['nbd.NBD']:
    """A libnbd handle on qemu-nbd serving ``image_opts``; qemu-nbd ends with it.
    qemu-nbd answers the handshake only once it has opened the disk (an iSCSI
    login): a target that accepts and never answers (a hung tgtd) would hold the
    connect for ever, so it is bounded by ``timeout`` seconds."""
    if nbd is None:
        raise exceptions.ConfigError('libnbd\'s Python bindings are missing: install '
                                     'python3-libnbd (tools/install-deps.sh links it)')
    argv = [*_DIE_WITH_PARENT, 'qemu-nbd', *(['--read-only'] if read_only else []),
            '--cache=none', *objects, '--image-opts', image_opts]
    h = nbd.NBD()
    try:
        h.aio_connect_systemd_socket_activation(argv)
        _poll_until(h, lambda: not h.aio_is_connecting(), timeout,
                    f'{description}: qemu-nbd did not open it within {timeout:.0f} s '
                    f'(the target accepts and does not answer?)')
        if not h.aio_is_ready():
            raise nbd.Error(f'connection state {h.connection_state()}')
    except nbd.Error as exc:
        raise exceptions.SourceError(f'{description}: qemu-nbd could not serve it: '
                                     f'{exc}') from None
    try:
        yield h
    finally:
        with contextlib.suppress(nbd.Error):
            h.shutdown()    # libnbd closes the handle (and reaps qemu-nbd) when the
                            # handle is freed, as this frame ends


def read_through(h, start: int, end: int, sink: Callable[[bytes], None],
                 limiter: TokenBucket | None, cancelled: Callable[[], bool],
                 progress: Callable[[int], None], description: str,
                 timeout: float = 60.0, window: int = WINDOW) -> int:
    """Read [start, end) in order into ``sink``; returns the offset reached (less
    than ``end`` only when ``cancelled`` said stop). Up to ``window`` reads are in
    flight, so qemu-nbd reads (and copies-on-read) while ``sink`` hashes. A read
    that gets no answer for ``timeout`` seconds (libiscsi retries a lost target for
    ever) is a SourceError: qemu-nbd is killed, and what was read stays read."""
    submitted = reached = start
    inflight: collections.deque = collections.deque()
    stop = False
    while reached < end:
        while (not stop and len(inflight) < window and submitted < end):
            if cancelled():
                stop = True
                break
            n = min(CHUNK, end - submitted)
            if limiter is not None:
                limiter.consume(n)
            buf = nbd.Buffer(n)
            try:
                cookie = h.aio_pread(buf, submitted)
            except nbd.Error as exc:
                raise exceptions.SourceError(f'{description}: read at byte '
                                             f'{submitted} failed: {exc}') from None
            inflight.append((submitted, n, buf, cookie))
            submitted += n
        if not inflight:
            return reached                      # cancelled, nothing left in flight
        offset, n, buf, cookie = inflight.popleft()
        _wait(h, cookie, offset, timeout, description)
        sink(buf.to_bytearray())
        reached = offset + n
        progress(reached)
    return reached


def _poll_until(h, done: Callable[[], bool], timeout: float, timed_out: str) -> None:
    """Run libnbd's state machine until ``done()``; after ``timeout`` seconds kill
    qemu-nbd (its target does not answer) and raise SourceError(``timed_out``)."""
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            with contextlib.suppress(nbd.Error):
                h.kill_subprocess(signal.SIGKILL)
            raise exceptions.SourceError(timed_out)
        h.poll(int(min(left, 0.5) * 1000) or 1)


def _wait(h, cookie: int, offset: int, timeout: float, description: str) -> None:
    try:
        _poll_until(h, lambda: h.aio_command_completed(cookie), timeout,
                    f'{description}: no answer for {timeout:.0f} s reading byte '
                    f'{offset} (target gone?)')
    except nbd.Error as exc:
        raise exceptions.SourceError(f'{description}: read at byte {offset} failed: '
                                     f'{exc}') from None
