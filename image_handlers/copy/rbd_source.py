"""RbdSource: a snapshot of an RBD image, read straight through librbd.

Used when an image lives in RBD but cannot be cloned (a local-file target, or the
image is in another cluster). Nova's own ``rbd export`` download never checks the
image's hash; this source feeds the copy engine, which always does, and resumes
from its checkpoints like an HTTP copy.

A snapshot never changes, so reading it from any offset is exact. Extents that do
not exist in the snapshot (or its parents) are returned as zeros without a round
trip to the OSDs: a 100 GiB image holding 2 GiB of data costs 2 GiB of reads.
"""
from __future__ import annotations

import bisect
import contextlib
import threading
from typing import Any

from oslo_log import log as logging

from image_handlers import exceptions
from image_handlers.copy.source import TransientSourceError
from image_handlers.rbd import cluster as rbd_cluster

LOG = logging.getLogger(__name__)

Extent = tuple[int, int]        # [start, end) of data in the snapshot


class RbdSource:
    """``pool/image@snapshot`` of ``cluster``, opened read-only at the snapshot."""

    def __init__(self, cluster: rbd_cluster.Cluster, pool: str, image: str,
                 snapshot: str, description: str | None = None) -> None:
        self.cluster = cluster
        self.pool = pool
        self.image = image
        self.snapshot = snapshot
        self.url = f'rbd://{cluster.fsid}/{pool}/{image}/{snapshot}'
        self.description = description or self.url
        self._identity: dict[str, Any] = {
            'url': self.url, 'fsid': cluster.fsid, 'pool': pool, 'image': image,
            'snapshot': snapshot}
        self._extents: tuple[tuple[str, int], list[Extent]] | None = None
        self._lock = threading.Lock()
        self.bytes_read = 0         # read from the cluster (all streams)
        self.hole_bytes = 0         # returned as zeros without reading

    def identity(self) -> dict[str, Any]:
        """Cluster, pool, names, and (once opened) RBD image id, snap id and size:
        a checkpoint of an image deleted and recreated under the same name is
        discarded, not resumed."""
        return dict(self._identity)

    def open(self, offset: int) -> 'RbdStream':
        rbd = rbd_cluster.rbd
        where = f'{self.pool}/{self.image}@{self.snapshot}'
        stack = contextlib.ExitStack()
        try:
            ioctx = stack.enter_context(self.cluster.ioctx(self.pool))
            try:
                img = rbd.Image(ioctx, self.image, snapshot=self.snapshot,
                                read_only=True)
            except rbd.ImageNotFound as exc:
                raise exceptions.SourceError(
                    f'rbd: {where} does not exist in cluster {self.cluster.fsid} '
                    f'(image or snapshot deleted?): {exc}') from exc
            stack.callback(img.close)
            size = img.size()
            key = (img.id(), img.snap_get_id(self.snapshot))
            self._identity.update(rbd_image_id=key[0], snap_id=key[1], size=size)
            if offset > size:
                raise exceptions.SourceError(
                    f'rbd: asked to read {where} from byte {offset}, but the snapshot '
                    f'has {size} bytes')
            extents = self._data_extents(img, key, size)
            stream = RbdStream(self, img, offset, size, extents)
        except rbd.ImageNotFound as exc:
            stack.close()
            raise exceptions.SourceError(f'rbd: {where} vanished: {exc}') from exc
        except rbd.Error as exc:
            stack.close()
            self.cluster.note_error(exc)
            raise TransientSourceError(f'rbd: opening {where} failed: {exc}') from exc
        except BaseException:
            stack.close()
            raise
        stream.attach(stack)
        return stream

    def _data_extents(self, img, key: tuple[str, int], size: int) -> list[Extent]:
        """Where the snapshot (parents included) holds data, merged; computed once
        per snapshot (a retry reuses it: snapshots do not change)."""
        if self._extents is not None and self._extents[0] == key:
            return self._extents[1]
        extents: list[Extent] = []

        def found(offset: int, length: int, exists: bool) -> int:
            if exists and length and offset < size:
                extents.append((offset, min(size, offset + length)))
            return 0

        img.diff_iterate(0, size, None, found, include_parent=True, whole_object=True)
        merged: list[Extent] = []
        for start, end in sorted(extents):  # adjacent objects become one long read
            if merged and merged[-1][1] >= start:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        LOG.debug('%s: %d data extent(s), %d of %d bytes', self.description,
                  len(merged), sum(e - s for s, e in merged), size)
        self._extents = (key, merged)
        return merged

    def count(self, read: int, holes: int) -> None:
        with self._lock:
            self.bytes_read += read
            self.hole_bytes += holes


class RbdStream:
    """One pass over the snapshot from ``start``: data extents are read with one
    librbd call per buffer, holes are filled with zeros locally."""

    def __init__(self, source: RbdSource, img, start: int, total: int,
                 extents: list[Extent]) -> None:
        self.start = start
        self.total = total
        self._source = source
        self._img = img
        self._pos = start
        self._extents = extents
        self._starts = [s for s, _e in extents]
        self._zeros = b''
        self._aborted = False
        self._stack: contextlib.ExitStack | None = None

    def attach(self, stack: contextlib.ExitStack) -> None:
        """Take ownership of the open image and I/O context (closed by close())."""
        self._stack = stack

    def readinto(self, buf: memoryview) -> int:
        if self._aborted:
            raise TransientSourceError(f'{self._source.description}: read aborted')
        pos, want = self._pos, min(len(buf), self.total - self._pos)
        if want <= 0:
            return 0
        i = bisect.bisect_right(self._starts, pos) - 1
        if i >= 0 and pos < self._extents[i][1]:
            n = self._read(buf, pos, min(want, self._extents[i][1] - pos))
            self._source.count(n, 0)
        else:
            nxt = self._starts[i + 1] if i + 1 < len(self._starts) else self.total
            n = min(want, nxt - pos)
            self._zero(buf, n)
            self._source.count(0, n)
        self._pos = pos + n
        return n

    def _read(self, buf: memoryview, pos: int, length: int) -> int:
        rbd = rbd_cluster.rbd
        try:
            data = self._img.read(pos, length)
        except rbd.Error as exc:
            self._source.cluster.note_error(exc)
            raise TransientSourceError(
                f'rbd: reading {self._source.description} at byte {pos} failed: '
                f'{exc}') from exc
        n = len(data)
        if n != length:
            raise TransientSourceError(
                f'rbd: short read of {self._source.description} at byte {pos}: '
                f'{n} of {length} bytes')
        buf[:n] = data
        return n

    def _zero(self, buf: memoryview, n: int) -> None:
        if len(self._zeros) < n:
            self._zeros = bytes(max(n, len(buf)))
        buf[:n] = memoryview(self._zeros)[:n]

    def abort(self) -> None:
        """Make the next read fail. librbd reads cannot be interrupted (they end
        within rbd_op_timeout), and closing the image under a reading thread is
        unsafe, so the reader is only told to stop."""
        self._aborted = True

    def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
