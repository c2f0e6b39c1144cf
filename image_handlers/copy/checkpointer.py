"""Durable checkpoints taken on a thread of their own.

fdatasync of tens of MiB can take a while; done by the writer it would stall
the pipeline. Here the writer only posts "bytes below N were written" and goes
on; this thread syncs the data, then records N. Posts made while a sync runs
collapse into one.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from typing import Any

from oslo_log import log as logging

from image_handlers.copy import checkpoint, fsutil
from image_handlers.copy.checkpoint import Checkpoint, CopyPaths

LOG = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, fd: int, paths: CopyPaths, meta: Checkpoint,
                 position: Callable[[int], dict[str, Any] | None] | None = None
                 ) -> None:
        self._fd = fd
        self._position = position     # the source's resume point for an offset
        self._paths = paths
        self._meta = meta
        self._cond = threading.Condition()
        self._pending: int | None = None
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self._durable = 0               # offset of the last checkpoint saved
        self._dir_synced = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f'copy-checkpoint {paths.target}')
        self._thread.start()

    def request(self, offset: int, max_lag: int | None = None) -> None:
        """Record ``offset`` once the data below it is durable; re-raise (in
        the writer's thread) an error the last checkpoint hit. With ``max_lag``,
        wait while a sync runs and ``offset`` is that far past the last durable
        checkpoint: a slow disk then slows the copy instead of letting a kill -9
        lose more than two intervals (tools/kill_trials.py found 8 MiB lost with
        1 MiB checkpoints on a busy disk)."""
        with self._cond:
            while (max_lag is not None and not self._closed
                   and (self._busy or self._pending is not None)
                   and offset - self._durable >= max_lag):
                self._cond.wait()
            self._raise_error()
            self._pending = offset
            self._cond.notify_all()

    def reset(self, meta: Checkpoint) -> None:
        """Forget the checkpoint (before the partial is truncated): waits for a
        sync in progress so no old offset can be recorded afterwards."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            self._pending = None
            self._meta = meta
            self._durable = 0
            checkpoint.remove(self._paths, partial=False)

    def set_meta(self, meta: Checkpoint) -> None:
        """Describe the data with ``meta`` from the next checkpoint on."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            self._meta = meta

    def close(self) -> None:
        """Stop the thread, dropping a request not started; raise its error."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            self._raise_error()

    def save_now(self, offset: int) -> None:
        """Synchronous checkpoint, after ``close()`` (cancel, giving up)."""
        self._save(offset)

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                offset, self._pending = self._pending, None
                self._busy = True
            try:
                self._save(offset)
                with self._cond:
                    self._durable = offset
            except BaseException as exc:
                with self._cond:
                    self._error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _save(self, offset: int) -> None:
        os.fdatasync(self._fd)
        position = self._position(offset) if self._position else None
        checkpoint.save(self._paths, dataclasses.replace(self._meta, offset=offset,
                                                         position=position))
        if not self._dir_synced:
            fsutil.fsync_dir(self._paths.directory)
            self._dir_synced = True
        LOG.debug('checkpoint of %s at byte %d', self._paths.target, offset)
