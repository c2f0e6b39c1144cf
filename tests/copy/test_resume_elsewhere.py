"""A partial copy is bound to the image's hash, not to the URL it came from: it
resumes from another server holding the same image, and the final hash covers
every byte (a prefix from elsewhere that is not the image's fails it)."""
from __future__ import annotations

import os

import pytest

from image_handlers import exceptions
from image_handlers.copy import CopyOptions, copy
from tests.copy.helpers import checkpoint_offset, partial_of, sha512


def _stopped_at(servers, options, image, target, cut=900_000, checksum=True):
    """A copy from a first server that drops at ``cut`` and then fails: the
    partial and its checkpoint are kept."""
    first = servers(image, path='/first')
    first.faults.close_after = cut
    first.faults.fail_from_request = 1
    opts = CopyOptions(**{**options.__dict__, 'retries': 0})
    with pytest.raises(exceptions.RetriesExhausted):
        copy(first.url, target, checksum=sha512(image) if checksum else None,
             expected_size=len(image), options=opts).wait(60)
    assert checkpoint_offset(target) == cut
    return opts


def test_resumes_from_another_location_of_the_same_image(servers, options, image,
                                                         tmp_path, caplog):
    caplog.set_level('INFO')
    target = str(tmp_path / 'disk')
    opts = _stopped_at(servers, options, image, target)
    second = servers(image, path='/elsewhere/image.raw')
    result = copy(second.url, target, checksum=sha512(image),
                  expected_size=len(image), options=opts).wait(60)
    assert result.resumed_from == 900_000
    assert second.bytes_sent == len(image) - 900_000
    assert second.requests[0].headers['Range'] == 'bytes=900000-'
    assert 'If-Range' not in second.requests[0].headers    # the other's validator
    assert 'another location of the same image' in caplog.text
    with open(target, 'rb') as f:
        assert f.read() == image


def test_without_a_checksum_another_location_starts_over(servers, options, image,
                                                         tmp_path):
    target = str(tmp_path / 'disk')
    opts = _stopped_at(servers, options, image, target, checksum=False)
    second = servers(image, path='/elsewhere')
    result = copy(second.url, target, expected_size=len(image), options=opts).wait(60)
    assert result.resumed_from == 0 and second.bytes_sent == len(image)


def test_a_prefix_that_is_not_the_images_fails_the_final_hash(servers, options,
                                                              image, tmp_path):
    """The first server sent other bytes (same size): resuming from the right one
    cannot make them right; the hash over every byte says so and nothing is
    published."""
    other = bytes(b ^ 0x5A for b in image)
    target = str(tmp_path / 'disk')
    first = servers(other, path='/wrong')
    first.faults.close_after = 900_000
    first.faults.fail_from_request = 1
    opts = CopyOptions(**{**options.__dict__, 'retries': 0})
    with pytest.raises(exceptions.RetriesExhausted):
        copy(first.url, target, checksum=sha512(image), expected_size=len(image),
             options=opts).wait(60)
    second = servers(image, path='/right')
    with pytest.raises(exceptions.ChecksumMismatch):
        copy(second.url, target, checksum=sha512(image), expected_size=len(image),
             options=opts).wait(60)
    assert not os.path.exists(target) and not os.path.exists(partial_of(target))


def test_a_server_refusing_ranged_reads_is_read_whole(servers, options, image,
                                                      tmp_path, caplog):
    """Glance 33 answers 400 to a ranged GET of an image in its RBD store: a cut
    copy is then read again from byte 0 (and verified), not failed."""
    caplog.set_level('WARNING')
    server = servers(image)
    server.faults.close_after = 1_000_003
    server.faults.reject_range = True
    target = str(tmp_path / 'disk')
    result = copy(server.url, target, checksum=sha512(image), options=options).wait(60)
    assert result.restarts_from_zero == 1 and result.retries == 1
    assert [r.status for r in server.requests] == [200, 400, 200]
    assert 'refuses ranged reads' in caplog.text
    with open(target, 'rb') as f:
        assert f.read() == image
