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
    path: str = ''

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


def parse_target(spec: str) -> Target:
    """``rbd:POOL/NAME`` or a file path (made absolute)."""
    if not spec:
        raise exceptions.InvalidTarget('empty target: give a file path or rbd:POOL/NAME')
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
    return FileTarget(kind=FILE, path=os.path.abspath(spec))
