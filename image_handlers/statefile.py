"""Small JSON records in ``state_dir``: written whole (tmp + fsync + rename, mode
0600), read leniently (a missing file is None; a damaged one is reported)."""
from __future__ import annotations

import json
import os
from typing import Any


def write_json(path: str, doc: Any) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(doc, indent=1, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def read_json(path: str) -> Any | None:
    """The record, or None when there is none; ValueError when it does not parse."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        return None
