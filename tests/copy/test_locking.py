"""One transfer per image per host."""
from __future__ import annotations

import logging
import os

import pytest

from image_handlers import exceptions
from image_handlers.copy import CopyOptions, copy
from tests.copy.helpers import sha512, wait_for

MiB = 1 << 20


def _waiting(caplog) -> bool:
    return any('waiting for lock' in r.getMessage() for r in caplog.records)


def test_concurrent_copies_of_one_image_transfer_once(servers, options, image,
                                                     tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='image_handlers.copy')
    server = servers(image)
    server.faults.pause_after = 1 * MiB
    target = str(tmp_path / 'disk')
    lock_dir = tmp_path / 'state' / 'locks'          # created on demand
    opts = CopyOptions(**{**options.__dict__, 'lock_dir': str(lock_dir)})

    first = copy(server.url, target, checksum=sha512(image), options=opts,
                 lock_name='image-1')
    wait_for(lambda: first.progress[0] == 1 * MiB, 'the first copy to start')
    second = copy(server.url, target, checksum=sha512(image), options=opts,
                  lock_name='image-1')
    wait_for(lambda: _waiting(caplog), 'the second copy to wait for the lock')
    server.faults.pause_after = None
    server.resume.set()

    results = [first.wait(60), second.wait(60)]

    assert [r.reused_existing for r in results] == [False, True]
    assert results[1].checksum == sha512(image) and results[1].size == len(image)
    assert len(server.requests) == 1 and server.bytes_sent == len(image)
    assert os.listdir(lock_dir) == ['.image-1.lock']
    assert sorted(os.listdir(tmp_path)) == ['disk', 'state']


def test_published_target_that_does_not_match_is_left_alone(servers, options, image,
                                                            tmp_path, caplog):
    """The lock holder published other bytes: the waiter refuses, never deletes."""
    caplog.set_level(logging.INFO, logger='image_handlers.copy')
    server = servers(image)
    server.faults.pause_after = 1 * MiB
    target = str(tmp_path / 'disk')
    first = copy(server.url, target, options=options, lock_name='image-2')
    wait_for(lambda: first.progress[0] == 1 * MiB, 'the first copy to start')
    second = copy(server.url, target, checksum=sha512(image + b'x'), options=options,
                  lock_name='image-2')
    wait_for(lambda: _waiting(caplog), 'the second copy to wait for the lock')
    server.faults.pause_after = None
    server.resume.set()

    first.wait(60)
    with pytest.raises(exceptions.ChecksumMismatch, match='left untouched'):
        second.wait(60)
    with open(target, 'rb') as f:
        assert f.read() == image


def test_lock_name_must_be_a_plain_name(options, tmp_path):
    with pytest.raises(exceptions.BadInput, match='lock name'):
        copy('http://127.0.0.1:1/x', str(tmp_path / 'disk'), options=options,
             lock_name='../etc')


def test_cancel_while_waiting_for_the_lock(servers, options, image, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='image_handlers.copy')
    server = servers(image)
    server.faults.pause_after = 1 * MiB
    target = str(tmp_path / 'disk')
    first = copy(server.url, target, options=options, lock_name='image-3')
    wait_for(lambda: first.progress[0] == 1 * MiB, 'the first copy to start')
    second = copy(server.url, target, options=options, lock_name='image-3')
    wait_for(lambda: _waiting(caplog), 'the second copy to wait for the lock')

    second.cancel()
    with pytest.raises(exceptions.CopyCancelled):
        second.wait(30)

    assert not first.done
    server.faults.pause_after = None
    server.resume.set()
    assert first.wait(60).bytes_transferred == len(image)
