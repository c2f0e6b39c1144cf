"""The per-image lock leaves nothing behind: its in-process registry entry goes
when nobody uses it (bench/soak.py found one kept per clone target, for ever), and
a lock taken with ``remove`` unlinks its file without ever letting two holders in."""
from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time

from image_handlers.copy import locking
from image_handlers.copy.cancel import CancelToken
from tests.copy.helpers import wait_for


def test_the_registry_forgets_a_lock_nobody_uses(tmp_path):
    paths = [locking.lock_path(str(tmp_path), f'rbd-vms-disk-{i}') for i in range(200)]
    for path in paths:
        with locking.image_lock(path, CancelToken(), 'test'):
            assert path in locking._thread_locks
    assert not set(paths) & set(locking._thread_locks)


def test_an_entry_stays_while_a_thread_waits(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='image_handlers.copy')
    path = locking.lock_path(str(tmp_path), 'image-1')
    inside, release = threading.Event(), threading.Event()
    got = []

    def holder():
        with locking.image_lock(path, CancelToken(), 'holder'):
            inside.set()
            release.wait(30)

    def waiter():
        with locking.image_lock(path, CancelToken(), 'waiter') as waited:
            got.append(waited)
    first = threading.Thread(target=holder)
    first.start()
    inside.wait(30)
    second = threading.Thread(target=waiter)
    second.start()
    wait_for(lambda: any('waiting for lock' in r.getMessage() for r in caplog.records),
             'the second thread to wait')
    assert locking._thread_locks[path][1] == 2
    release.set()
    first.join(30)
    second.join(30)
    assert got == [True]
    assert path not in locking._thread_locks


def _take_many(path: str, log: str, rounds: int) -> None:
    for _ in range(rounds):
        with locking.image_lock(path, CancelToken(), 'proc', remove=True):
            with open(log, 'a') as f:
                f.write(f'in {os.getpid()}\n')
                f.flush()
                time.sleep(0.002)       # a holder that works a while: others poll
                f.write(f'out {os.getpid()}\n')


def test_removed_lock_files_still_exclude_processes(tmp_path):
    path = locking.lock_path(str(tmp_path / 'locks'), 'rbd-vms-disk')
    log = str(tmp_path / 'log')
    ctx = multiprocessing.get_context('fork')
    procs = [ctx.Process(target=_take_many, args=(path, log, 50)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    lines = open(log).read().splitlines()
    assert len(lines) == 400
    for enter, leave in zip(lines[::2], lines[1::2]):    # never two holders at once
        assert enter.startswith('in ') and leave == 'out ' + enter[3:]
    assert os.listdir(tmp_path / 'locks') == []
