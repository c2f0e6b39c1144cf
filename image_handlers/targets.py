"""Where an image is to be provided: a local file, or an RBD image.

``parse_target`` accepts the command-line form: a path, or ``rbd:POOL/NAME``.
"""
from __future__ import annotations

import dataclasses
import os

from image_handlers import exceptions
from image_handlers.copy import check_target_path

FILE = 'file'
RBD = 'rbd'


@dataclasses.dataclass(frozen=True)
class Target:
    kind: str

    @property
    def display(self) -> str:
        return self.kind


@dataclasses.dataclass(frozen=True)
class FileTarget(Target):
    """A local file. ``disk_format`` is what the caller will use it as: ``raw``
    (the image's bytes, e.g. Nova's ``_base`` file) or ``qcow2`` (an instance disk
    that may be an overlay backed by the image, as Nova's Qcow2 backend makes)."""

    path: str = ''
    disk_format: str = 'raw'
    # The name the caller gives the file once done (Nova renames its ``.part`` to
    # the ``_base`` file): handlers that record who depends on what use it.
    final_path: str | None = None
    # The caller treats the target as a regular file of its own (Nova copies its
    # _base with ``cp -r``, which copies a symbolic link as a link): no symlink.
    regular_file: bool = False

    @property
    def display(self) -> str:
        return self.path

    def check_writable(self) -> None:
        """Refuse, with what to do, a target we could not publish safely (the copy
        engine's own check, run early so no handler is even asked)."""
        check_target_path(self.path)


@dataclasses.dataclass(frozen=True)
class RbdTarget(Target):
    pool: str = ''
    name: str = ''

    @property
    def display(self) -> str:
        return f'rbd:{self.pool}/{self.name}'


DISK_FORMATS = ('raw', 'qcow2')


def parse_target(spec: str, disk_format: str = 'raw') -> Target:
    """``rbd:POOL/NAME`` or a file path (made absolute); ``disk_format`` for files."""
    if not spec:
        raise exceptions.InvalidTarget('empty target: give a file path or rbd:POOL/NAME')
    if '\x00' in spec:     # os calls refuse it late; librbd would cut the name at it
        raise exceptions.InvalidTarget(f'target {spec!r} contains a NUL character')
    if spec.startswith('rbd:'):
        rest = spec[4:]
        pool, sep, name = rest.partition('/')
        if not sep or not pool or not name or '/' in name or '@' in name:
            raise exceptions.InvalidTarget(
                f'malformed RBD target {spec!r}: expected rbd:POOL/NAME')
        return RbdTarget(kind=RBD, pool=pool, name=name)
    if spec.endswith('/'):
        raise exceptions.InvalidTarget(
            f'target {spec!r} names a directory: give the path of the disk file')
    if disk_format not in DISK_FORMATS:
        raise exceptions.InvalidTarget(
            f'target disk format {disk_format!r}: use one of {", ".join(DISK_FORMATS)}')
    return FileTarget(kind=FILE, path=os.path.abspath(spec), disk_format=disk_format)
