"""Small helpers shared by the copy tests."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
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


def kill_9_at_checkpoint(args: list[str], target: str, at_least: int,
                         timeout: float = 60.0, **popen) -> int:
    """Run ``args``, SIGKILL it once the copy to ``target`` has a durable checkpoint
    of at least ``at_least`` bytes; return that checkpoint. Asserts the process
    died by the signal and left its partial file, not a published target."""
    child = subprocess.Popen(args, **popen)
    try:
        wait_for(lambda: (checkpoint_offset(target) or 0) >= at_least
                 or child.poll() is not None,
                 f'the copy to checkpoint {at_least} bytes', timeout)
        seen = checkpoint_offset(target)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL, child.returncode
    assert os.path.exists(partial_of(target)) and not os.path.exists(target)
    return seen
