"""Small helpers shared by the copy tests."""
from __future__ import annotations

import hashlib
import json
import os
import time

from image_handlers.copy import Checksum


def sha512(data: bytes) -> Checksum:
    return Checksum('sha512', hashlib.sha512(data).hexdigest())


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    """Poll until ``predicate()`` is true; a bounded wait, not a timing check."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out waiting for {what}')
        time.sleep(0.005)


def partial_of(target: str) -> str:
    directory, name = os.path.split(target)
    return os.path.join(directory, f'.{name}.part')


def checkpoint_offset(target: str) -> int | None:
    try:
        with open(partial_of(target) + '.json') as f:
            return json.load(f)['offset']
    except (FileNotFoundError, ValueError):
        return None
