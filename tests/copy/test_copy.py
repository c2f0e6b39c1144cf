"""The copy engine against a real loopback HTTP server with injected faults."""
from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest

from image_handlers import exceptions
from image_handlers.copy import Checksum, CopyOptions, HttpSource, copy
from image_handlers.copy import checkpoint
from tests.copy.conftest import MiB, make_image
from tests.copy.helpers import checkpoint_offset, partial_of, sha512, wait_for


def test_plain_copy_is_verified_sparse_and_identical(servers, options, tmp_path):
    data = make_image(8 * MiB, seed=2, zero_fraction=0.75)
    server = servers(data)
    target = str(tmp_path / 'disk.raw')

    result = copy(server.url, target, checksum=sha512(data), expected_size=len(data),
                  options=options, description='image 1').wait(60)

    with open(target, 'rb') as f:
        assert f.read() == data
    assert result.target == target
    assert result.size == result.bytes_transferred == len(data)
    assert (result.retries, result.restarts_from_zero, result.resumed_from) == (0, 0, 0)
    assert not result.reused_existing
    assert result.sparse_bytes >= len(data) // 2
    assert os.stat(target).st_blocks * 512 < len(data) // 2
    assert os.listdir(tmp_path) == ['disk.raw']        # no partial, no checkpoint


def test_cut_connection_resumes_in_process_at_the_exact_offset(servers, options,
                                                               image, tmp_path):
    server = servers(image)
    server.faults.close_after = 1_000_003
    target = str(tmp_path / 'disk')

    result = copy(server.url, target, checksum=sha512(image), options=options).wait(60)

    assert result.retries == 1
    assert result.bytes_transferred == len(image)
    assert server.bytes_sent - len(image) <= options.buffer_size
    resumed = server.requests[1]
    assert resumed.headers['Range'] == 'bytes=1000003-'
    assert resumed.headers['If-Range'] == server.etag
    assert resumed.status == 206
    with open(target, 'rb') as f:
        assert f.read() == image


def test_data_bypasses_the_page_cache_also_after_a_cut_at_an_odd_byte(
        servers, options, tmp_path):
    """O_DIRECT: the stream resumed at byte 1000003 fills its first buffer from
    the same offset into a memory page, so it and every later buffer stay aligned."""
    data = make_image(4 * MiB + 777, seed=5, zero_fraction=0.0)  # no holes
    server = servers(data)
    server.faults.close_after = 1_000_003
    target = str(tmp_path / 'disk')
    result = copy(server.url, target, checksum=sha512(data), options=options).wait(60)
    assert result.retries == 1
    with open(target, 'rb') as f:
        assert f.read() == data
    # Not direct: the bytes around the cut in its page ([999424, 1003520): the tail
    # before it and the head after the resume), and the last 777 bytes.
    assert result.direct_bytes == len(data) - (1003520 - 999424) - 777

    off = copy(servers(data).url, str(tmp_path / 'buffered'), checksum=sha512(data),
               options=dataclasses.replace(options, direct_io=False)).wait(60)
    assert off.direct_bytes == 0
    with open(tmp_path / 'buffered', 'rb') as f:
        assert f.read() == data


def test_server_ignoring_range_restarts_from_zero_and_verifies(servers, options,
                                                               image, tmp_path):
    server = servers(image)
    server.faults.close_after = 2 * MiB + 5
    server.faults.ignore_range = True
    target = str(tmp_path / 'disk')

    result = copy(server.url, target, checksum=sha512(image), options=options).wait(60)

    assert result.restarts_from_zero == 1
    assert result.bytes_transferred == len(image) + 2 * MiB + 5
    assert [r.status for r in server.requests] == [200, 200]
    with open(target, 'rb') as f:
        assert f.read() == image


def test_checksum_mismatch_leaves_nothing(servers, options, image, tmp_path):
    server = servers(image)
    server.faults.wrong_bytes = True
    target = str(tmp_path / 'disk')
    expected = sha512(image)

    with pytest.raises(exceptions.ChecksumMismatch) as err:
        copy(server.url, target, checksum=expected, options=options,
             description='image abc from http-store').wait(60)

    message = str(err.value)
    for part in ('image abc from http-store', target, str(expected), 'got sha512:'):
        assert part in message
    assert os.listdir(tmp_path) == []


def test_size_mismatch_is_found_before_downloading(servers, options, image, tmp_path):
    server = servers(image)
    with pytest.raises(exceptions.SizeMismatch) as err:
        copy(server.url, str(tmp_path / 'disk'), expected_size=len(image) + 1,
             options=options).wait(60)
    assert str(len(image)) in str(err.value)
    assert os.listdir(tmp_path) == []
    assert server.bytes_sent < len(image)


def test_md5_checksum(servers, options, image, tmp_path):
    server = servers(image)
    """md5 (the old ``checksum`` field) is really computed: a wrong one fails."""
    wrong = Checksum('md5', hashlib.md5(image + b'x').hexdigest())
    with pytest.raises(exceptions.ChecksumMismatch, match='md5'):
        copy(server.url, str(tmp_path / 'bad'), checksum=wrong, options=options).wait(60)
    assert not os.path.exists(tmp_path / 'bad')
    md5 = Checksum('md5', hashlib.md5(image).hexdigest())
    copy(server.url, str(tmp_path / 'disk'), checksum=md5, options=options).wait(60)
    with open(tmp_path / 'disk', 'rb') as f:
        assert f.read() == image


def test_copy_without_checksum_and_without_sparse(servers, options, image, tmp_path):
    server = servers(image)
    opts = CopyOptions(**{**options.__dict__, 'sparse': False})
    target = str(tmp_path / 'disk')
    result = copy(server.url, target, options=opts).wait(60)
    assert result.checksum is None and result.sparse_bytes == 0
    assert os.stat(target).st_blocks * 512 >= len(image)
    with open(target, 'rb') as f:
        assert f.read() == image


def test_empty_image(servers, options, tmp_path):
    server = servers(b'')
    target = str(tmp_path / 'disk')
    result = copy(server.url, target, checksum=sha512(b''), expected_size=0,
                  options=options).wait(60)
    assert result.size == 0 and os.path.getsize(target) == 0


def test_server_error_once_is_retried(servers, options, image, tmp_path):
    server = servers(image)
    server.faults.status_once = 500
    result = copy(server.url, str(tmp_path / 'disk'), checksum=sha512(image),
                  options=options).wait(60)
    assert result.retries == 1
    assert [r.status for r in server.requests] == [500, 200]


def test_not_found_fails_at_once_without_retry(servers, options, image, tmp_path):
    server = servers(image)
    server.faults.status_always = 404
    with pytest.raises(exceptions.SourceError) as err:
        copy(server.url, str(tmp_path / 'disk'), options=options).wait(60)
    assert not isinstance(err.value, exceptions.RetriesExhausted)
    assert '404' in str(err.value) and server.url in str(err.value)
    assert len(server.requests) == 1
    assert os.listdir(tmp_path) == []


def test_retries_exhausted_keeps_partial_then_a_later_run_resumes(servers, options,
                                                                  image, tmp_path):
    """copy_retries counts failures in a row without a new byte: one drop at 900 kB,
    then only errors: 2 retries without new data, and it gives up."""
    server = servers(image)
    server.faults.close_after = 900_000
    server.faults.fail_from_request = 1
    target = str(tmp_path / 'disk')
    opts = CopyOptions(**{**options.__dict__, 'retries': 2})

    with pytest.raises(exceptions.RetriesExhausted) as err:
        copy(server.url, target, checksum=sha512(image), options=opts).wait(60)

    assert 'giving up after 2 retries in a row without new data' in str(err.value)
    assert len(server.requests) == 3    # the drop, 2 retries that fail: give up
    assert checkpoint_offset(target) == 900_000
    assert os.path.getsize(partial_of(target)) <= 900_000
    assert not os.path.exists(target)

    server.faults.fail_from_request = None
    sent_before = server.bytes_sent
    result = copy(server.url, target, checksum=sha512(image), options=opts).wait(60)

    assert result.resumed_from == 900_000
    assert result.bytes_transferred == len(image) - 900_000
    assert server.bytes_sent - sent_before == len(image) - 900_000
    with open(target, 'rb') as f:
        assert f.read() == image
    assert os.listdir(tmp_path) == ['disk']


def test_drops_that_make_progress_never_exhaust_retries(servers, options, image,
                                                        tmp_path):
    """Every response is cut after 300 kB, 2 retries allowed: each retry brings new
    bytes, so the copy completes after many more than 2 drops."""
    server = servers(image)
    server.faults.close_after = 300_000
    server.faults.close_every_time = True
    opts = CopyOptions(**{**options.__dict__, 'retries': 2})

    result = copy(server.url, str(tmp_path / 'disk'), checksum=sha512(image),
                  options=opts).wait(60)

    drops = -(-len(image) // 300_000) - 1
    assert result.retries == drops > opts.retries
    assert len(server.requests) == drops + 1
    with open(tmp_path / 'disk', 'rb') as f:
        assert f.read() == image


def test_changed_object_is_fetched_again_not_spliced(servers, options, tmp_path):
    old = make_image(4 * MiB, seed=1)
    new = make_image(4 * MiB, seed=2)
    server = servers(old)
    server.faults.close_after = 1 * MiB
    server.faults.close_every_time = True
    target = str(tmp_path / 'disk')
    opts = CopyOptions(**{**options.__dict__, 'retries': 0})
    with pytest.raises(exceptions.RetriesExhausted):
        copy(server.url, target, expected_size=len(old), options=opts).wait(60)
    assert checkpoint_offset(target) == 1 * MiB

    server.set_data(new)                  # same size, new ETag
    server.faults.close_after = None
    result = copy(server.url, target, expected_size=len(new), options=opts).wait(60)

    assert server.requests[-1].headers['If-Range'] != server.etag   # old validator
    assert result.restarts_from_zero == 1
    with open(target, 'rb') as f:
        assert f.read() == new


def test_checkpoint_for_another_checksum_is_discarded(servers, options, image,
                                                      tmp_path):
    server = servers(image)
    server.faults.close_after = 1 * MiB
    server.faults.close_every_time = True
    target = str(tmp_path / 'disk')
    opts = CopyOptions(**{**options.__dict__, 'retries': 0})
    other = Checksum('sha512', '0' * 128)
    with pytest.raises(exceptions.RetriesExhausted):
        copy(server.url, target, checksum=other, options=opts).wait(60)
    assert checkpoint_offset(target) == 1 * MiB

    server.faults.close_after = None
    result = copy(server.url, target, checksum=sha512(image), options=opts).wait(60)
    assert result.resumed_from == 0 and result.bytes_transferred == len(image)
    assert 'Range' not in server.requests[-1].headers


def test_complete_partial_is_published_without_downloading(servers, options, image,
                                                           tmp_path):
    """A run killed after its last checkpoint but before publishing."""
    server = servers(image)
    target = str(tmp_path / 'disk')
    with open(partial_of(target), 'wb') as f:
        f.write(image)
    paths = checkpoint.CopyPaths.for_target(target)
    checkpoint.save(paths, checkpoint.Checkpoint(
        offset=len(image), expected_size=None, checksum=str(sha512(image)),
        source=HttpSource(server.url).identity()))

    result = copy(server.url, target, checksum=sha512(image), options=options).wait(60)

    assert result.bytes_transferred == 0 and result.resumed_from == len(image)
    assert [r.status for r in server.requests] == [416]
    with open(target, 'rb') as f:
        assert f.read() == image


def test_cancel_keeps_the_partial_for_a_later_resume(servers, options, image,
                                                     tmp_path):
    server = servers(image)
    server.faults.pause_after = 2 * MiB
    target = str(tmp_path / 'disk')
    task = copy(server.url, target, checksum=sha512(image), options=options)
    wait_for(lambda: task.progress[0] == 2 * MiB, 'the first 2 MiB')
    assert task.progress == (2 * MiB, len(image))

    task.cancel()
    with pytest.raises(exceptions.CopyCancelled):
        task.wait(30)

    assert checkpoint_offset(target) == 2 * MiB
    assert not os.path.exists(target)
    server.faults.pause_after = None
    server.resume.set()
    result = copy(server.url, target, checksum=sha512(image), options=options).wait(60)
    assert result.resumed_from == 2 * MiB
    with open(target, 'rb') as f:
        assert f.read() == image


def test_bandwidth_limited_copy_still_verifies(servers, options, image, tmp_path):
    server = servers(image)
    """4 MiB/s with a one-second burst for a ~6 MiB image: the limiter holds the
    copy back (by its own account, not a wall clock), and it still verifies. How
    long it sleeps depends on how fast this machine reads (time spent reading is
    time the bucket refills), so only "it slept" is asserted here; the limiter's
    arithmetic is tested with a fake clock (test_ratelimit, test_host_bucket)."""
    assert len(image) > 5 * MiB
    # No checkpoint within the image: time the writer spends waiting for a slow
    # checkpoint sync (engine back-pressure) would count against the limiter's own.
    opts = CopyOptions(**{**options.__dict__, 'bandwidth_limit': 4 * MiB,
                          'checkpoint_interval': 64 * MiB})
    result = copy(server.url, str(tmp_path / 'disk'), checksum=sha512(image),
                  options=opts).wait(60)
    assert result.size == len(image)
    assert result.throttled_seconds > 0
    with open(tmp_path / 'disk', 'rb') as f:
        assert f.read() == image


def test_wait_timeout_leaves_the_copy_running(servers, options, image, tmp_path):
    server = servers(image)
    server.faults.pause_after = 1 * MiB
    task = copy(server.url, str(tmp_path / 'disk'), checksum=sha512(image),
                options=options)
    with pytest.raises(TimeoutError):
        task.wait(0.01)
    assert not task.done
    server.faults.pause_after = None
    server.resume.set()
    assert task.wait(60).size == len(image) and task.done


def test_malformed_arguments_are_refused_at_once(options, tmp_path):
    with pytest.raises(exceptions.BadInput, match='ALGORITHM:HEXDIGEST'):
        copy('http://127.0.0.1:1/x', str(tmp_path / 'disk'), checksum='nope')
    with pytest.raises(exceptions.InvalidTarget):
        copy('http://127.0.0.1:1/x', str(tmp_path) + '/')
    with pytest.raises(exceptions.BadInput, match='expected size'):
        copy('http://127.0.0.1:1/x', str(tmp_path / 'disk'), expected_size=-1)
    with pytest.raises(exceptions.BadInput, match='buffer_size'):
        CopyOptions(buffer_size=0)
