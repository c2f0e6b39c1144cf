"""What the engine does to (and refuses for) the target's file system."""
from __future__ import annotations

import os

import pytest

from image_handlers import exceptions
from image_handlers.copy import copy
from tests.copy.conftest import MiB, make_image
from tests.copy.helpers import sha512, wait_for


def test_existing_target_is_untouched(servers, options, image, tmp_path):
    server = servers(image)
    target = tmp_path / 'disk'
    target.write_bytes(b'precious')
    os.utime(target, (1_000_000_000, 1_000_000_000))

    with pytest.raises(exceptions.TargetExists) as err:
        copy(server.url, str(target), checksum=sha512(image), options=options).wait(30)

    assert str(target) in str(err.value)
    assert target.read_bytes() == b'precious'
    assert os.stat(target).st_mtime == 1_000_000_000
    assert os.listdir(tmp_path) == ['disk']          # no partial created
    assert server.requests == []


def test_missing_directory(servers, options, image, tmp_path):
    server = servers(image)
    missing = tmp_path / 'no' / 'such'
    with pytest.raises(exceptions.InvalidTarget) as err:
        copy(server.url, str(missing / 'disk'), options=options).wait(30)
    assert str(missing) in str(err.value) and 'create it' in str(err.value)
    assert server.requests == []


def test_directory_that_is_a_file(servers, options, image, tmp_path):
    server = servers(image)
    (tmp_path / 'file').write_bytes(b'')
    with pytest.raises(exceptions.InvalidTarget) as err:
        copy(server.url, str(tmp_path / 'file' / 'disk'), options=options).wait(30)
    assert 'not a directory' in str(err.value)


def test_read_only_directory(servers, options, image, tmpfs):
    server = servers(image)
    mount = tmpfs('1m', read_only=True)
    with pytest.raises(exceptions.InvalidTarget) as err:
        copy(server.url, os.path.join(mount, 'disk'), options=options).wait(30)
    assert mount in str(err.value) and 'not writable' in str(err.value)
    assert server.requests == []


def test_disk_full_removes_everything(servers, options, tmpfs):
    data = make_image(6 * MiB, seed=4, zero_fraction=0.0)
    server = servers(data)
    mount = tmpfs('2m')
    target = os.path.join(mount, 'disk')

    with pytest.raises(exceptions.DiskFull) as err:
        copy(server.url, target, checksum=sha512(data), options=options).wait(60)

    message = str(err.value)
    assert mount in message and str(len(data)) in message and 'free' in message
    assert os.listdir(mount) == []


def test_two_copies_to_one_target_without_a_lock_name(servers, options, image,
                                                      tmp_path):
    server = servers(image)
    server.faults.pause_after = 1 * MiB
    target = str(tmp_path / 'disk')
    first = copy(server.url, target, checksum=sha512(image), options=options)
    wait_for(lambda: first.progress[0] == 1 * MiB, 'the first copy to start')

    with pytest.raises(exceptions.InvalidTarget) as err:
        copy(server.url, target, checksum=sha512(image), options=options).wait(30)
    assert 'in progress' in str(err.value)

    server.faults.pause_after = None
    server.resume.set()
    assert first.wait(60).size == len(image)
    with open(target, 'rb') as f:
        assert f.read() == image
