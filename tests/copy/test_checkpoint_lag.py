"""Checkpoints on a slow disk: the writer waits for a sync that fell behind, so a
kill -9 never loses more than two checkpoint intervals (tools/kill_trials.py found
8 MiB lost with 1 MiB checkpoints on a busy disk: requests collapsed while one
fdatasync ran and the copy ran far ahead of its last durable checkpoint).

A slow disk cannot be made on this machine (no device mapper, so no dm-delay):
the sync is held by an Event instead, in a Checkpointer whose ``_save`` waits for
it before doing the real fdatasync and checkpoint write on a real file.
"""
from __future__ import annotations

import os
import threading

from image_handlers.copy import checkpoint
from image_handlers.copy.checkpoint import Checkpoint, CopyPaths
from image_handlers.copy.checkpointer import Checkpointer

MiB = 1 << 20


class HeldSyncCheckpointer(Checkpointer):
    """Stand-in for a slow disk: each save waits until the test releases it."""

    def __init__(self, *args, **kwargs) -> None:
        self.release = threading.Semaphore(0)
        self.started = threading.Semaphore(0)
        super().__init__(*args, **kwargs)

    def _save(self, offset: int) -> None:
        self.started.release()
        self.release.acquire()
        super()._save(offset)


def _request_in_thread(cp: Checkpointer, offset: int, max_lag: int):
    done = threading.Event()
    threading.Thread(target=lambda: (cp.request(offset, max_lag=max_lag), done.set()),
                     daemon=True).start()
    return done


def test_the_writer_waits_while_the_previous_checkpoint_is_still_syncing(tmp_path):
    paths = CopyPaths.for_target(str(tmp_path / 'disk'))
    fd = os.open(paths.partial, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b'\1' * (3 * MiB), 0)
        cp = HeldSyncCheckpointer(fd, paths, Checkpoint(0, 3 * MiB, None,
                                                        {'url': 'http://h/x'}))
        cp.request(1 * MiB, max_lag=1 * MiB)        # the sync of 1 MiB starts...
        assert cp.started.acquire(timeout=10)
        waiting = _request_in_thread(cp, 2 * MiB, 1 * MiB)
        # ...and is held: the writer must not go on (2 MiB past nothing durable)
        assert not waiting.wait(0.3)
        cp.release.release()                        # the disk catches up
        assert waiting.wait(10)
        assert cp.started.acquire(timeout=10)       # the 2 MiB sync started
        cp.release.release()
        cp.close()
        assert checkpoint.load(paths).offset == 2 * MiB
    finally:
        os.close(fd)


def test_without_max_lag_requests_collapse_and_never_wait(tmp_path):
    paths = CopyPaths.for_target(str(tmp_path / 'disk'))
    fd = os.open(paths.partial, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        cp = HeldSyncCheckpointer(fd, paths, Checkpoint(0, None, None, {'url': 'x'}))
        cp.request(1 * MiB)
        assert cp.started.acquire(timeout=10)
        for offset in range(2, 10):
            cp.request(offset * MiB)                # returns at once: collapsed
        cp.release.release()
        assert cp.started.acquire(timeout=10)       # one save for all of them
        cp.release.release()
        cp.close()
        assert checkpoint.load(paths).offset == 9 * MiB
    finally:
        os.close(fd)
