"""Small JSON records in ``state_dir``: written whole (a private temporary file,
fsync, rename, fsync of the directory: mode 0600, never half-written, durable),
read leniently (a missing file is None; a damaged one is a ValueError)."""
from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any


def write_json(path: str, doc: Any) -> None:
    directory, name = os.path.split(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # The writer's pid in the name: remove_stale_tmps can tell a dead writer's.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{name}.{os.getpid()}.',
                               suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f:                     # mkstemp: mode 0600
            json.dump(doc, f, indent=1, sort_keys=True)
            f.write('\n')
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


_TMP = re.compile(r'^\..+\.(\d+)\.[^./]+\.tmp$')


def remove_stale_tmps(directory: str) -> list[str]:
    """Remove the temporary files of writers that died before their rename (a
    kill -9 between mkstemp and replace left them for ever; found by
    tools/kill_trials.py); a live writer's are left alone. Returns the names."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        match = _TMP.match(name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_json(path: str) -> Any | None:
    """The record, or None when there is none; ValueError when it does not parse."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def file_name_of(image_id: str, what: str) -> str:
    """``image_id`` itself when it can name a file in a directory of ours (verdict
    files, pins): never a path, never hidden; else ValueError naming ``what`` it
    was to name."""
    if (not isinstance(image_id, str) or not image_id or image_id.startswith('.')
            or '/' in image_id or '\x00' in image_id):
        raise ValueError(f'image id {image_id!r} cannot name {what}')
    return image_id
