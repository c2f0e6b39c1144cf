"""Where a copy in progress lives, and the checkpoint that lets it resume.

The partial file ``.<name>.part`` sits beside the target, on the same file
system, so publishing is a hard link. ``.<name>.part.json`` records how many
bytes of it are durable and what they are a prefix of; it is only ever
replaced by rename, after the data was fdatasync'ed, so after a crash (even
kill -9 or a power loss) it never claims more than the disk holds.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from oslo_log import log as logging

VERSION = 1
LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CopyPaths:
    target: str
    directory: str
    partial: str
    checkpoint: str

    @classmethod
    def for_target(cls, target: str) -> 'CopyPaths':
        target = os.path.abspath(target)
        directory, name = os.path.split(target)
        partial = os.path.join(directory, f'.{name}.part')
        return cls(target, directory, partial, partial + '.json')

    @property
    def checkpoint_tmp(self) -> str:
        return self.checkpoint + '.tmp'


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    offset: int                     # bytes of the partial known to be durable
    expected_size: int | None
    checksum: str | None            # "algo:hex" or None
    source: dict[str, Any]          # the source's identity() validators
    # The Glance image it is a copy of, when known: clean-up removes a partial
    # whose image is gone (image_handlers.cleanup).
    image_id: str | None = None
    # Where the source resumes ``offset`` from, when it cannot simply seek there:
    # a compressed source's last frame boundary at or before it (Source.position).
    position: dict[str, Any] | None = None

    def matches(self, expected_size: int | None, checksum: str | None,
                source_url: Any) -> str | None:
        """Why this checkpoint cannot be resumed by the copy asked for, or None.

        A partial is bound to the image's hash, not to where it came from: with a
        checksum, a prefix read from one location (Glance's data API, an http
        server, an RBD snapshot, another Glance address) is resumed from any
        other, because the final hash covers every byte. Without one, nothing
        would prove the prefix: only the same URL resumes."""
        if self.expected_size != expected_size:
            return f'expected size was {self.expected_size}, now {expected_size}'
        if self.checksum != checksum:
            return f'checksum was {self.checksum}, now {checksum}'
        if self.source.get('url') != source_url and checksum is None:
            return ('the source URL differs, and no checksum would prove a prefix '
                    'read from another source')
        return None

    def same_source(self, source_url: Any) -> bool:
        return self.source.get('url') == source_url


def load(paths: CopyPaths) -> Checkpoint | None:
    """The checkpoint beside the partial, or None when absent or unreadable."""
    try:
        with open(paths.checkpoint, encoding='utf-8') as f:
            data = json.load(f)
        if data.get('version') != VERSION:
            raise ValueError(f'version {data.get("version")!r}')
        offset = data['offset']
        size = data['expected_size']
        if not isinstance(offset, int) or offset < 0 or not (
                size is None or isinstance(size, int)):
            raise ValueError('bad offset or size')
        source = data['source']
        if not isinstance(source, dict):
            raise ValueError('bad source')
        image_id = data.get('image_id')
        position = data.get('position')
        return Checkpoint(offset, size, data['checksum'], source,
                          image_id if isinstance(image_id, str) else None,
                          position if isinstance(position, dict) else None)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        LOG.warning('ignoring unreadable checkpoint %s: %s', paths.checkpoint, exc)
        return None


def save(paths: CopyPaths, checkpoint: Checkpoint) -> None:
    """Replace the checkpoint atomically (tmp file, fsync, rename).

    The caller must have fdatasync'ed the partial up to ``checkpoint.offset``.
    """
    data = dataclasses.asdict(checkpoint)
    data['version'] = VERSION
    body = json.dumps(data, sort_keys=True).encode()
    fd = os.open(paths.checkpoint_tmp,
                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(body)
            while len(view):
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(paths.checkpoint_tmp, paths.checkpoint)
    except BaseException:
        # e.g. ENOSPC: the previous checkpoint stays whole; no half-written tmp
        try:
            os.unlink(paths.checkpoint_tmp)
        except FileNotFoundError:
            pass
        raise


def remove(paths: CopyPaths, partial: bool = True) -> None:
    """Delete the checkpoint (and the partial file unless ``partial`` is False)."""
    names = [paths.checkpoint, paths.checkpoint_tmp]
    if partial:
        names.append(paths.partial)
    for name in names:
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
