"""Compressed sources (issue 13): zstd and gzip decompressed while they stream,
against the real loopback HTTP server of the copy tests (fault_server).

Images are compressed with tools/compress_image.py (zstd seekable format, gzip
members), so the tool an operator runs is the one tested.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys

import pytest

from image_handlers import exceptions
from image_handlers.copy import HttpSource, copy
from image_handlers.copy.compression import (CompressedDataError, CompressedSource,
                                             declared, wrap)
from tests.copy.helpers import kill_9_at_checkpoint, partial_of, sha512
from tools import compress_image

MiB = 1 << 20
FRAME = 1 * MiB
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def compressed(image: bytes, tmp_path, codec: str = 'zstd',
               frame_size: int = FRAME) -> bytes:
    src, dst = tmp_path / f'raw-{codec}', tmp_path / f'image.{codec}'
    src.write_bytes(image)
    out = compress_image.compress(str(src), str(dst), codec, frame_size)
    data = dst.read_bytes()
    src.unlink()
    dst.unlink()
    assert out.compressed_size == len(data) and out.size == len(image)
    return data


def frame_starts(image: bytes, data: bytes, codec: str) -> dict[int, int]:
    """Decompressed offset -> compressed offset of every frame start, found by
    decompressing frame by frame with the codec library (not our code)."""
    starts, pos, out = {0: 0}, 0, 0
    while pos < len(data):
        if codec == 'zstd':
            import pyzstd
            d = pyzstd.ZstdDecompressor()
            out += len(d.decompress(data[pos:]))
        else:
            import zlib
            d = zlib.decompressobj(31)
            out += len(d.decompress(data[pos:]))
        pos = len(data) - len(d.unused_data)
        starts.setdefault(out, pos)
    return starts


def assert_sparse_copy(target: str, image: bytes) -> None:
    with open(target, 'rb') as f:
        assert f.read() == image
    st = os.stat(target)
    assert st.st_blocks * 512 < len(image) * 3 // 4     # the zero half is holes
    fd = os.open(target, os.O_RDONLY)
    try:
        first_zero = image.index(bytes(64 << 10))
        hole = os.lseek(fd, first_zero - first_zero % 4096, os.SEEK_HOLE)
        assert hole < len(image)        # a hole before the end of the file
    finally:
        os.close(fd)


@pytest.mark.parametrize('codec', ['zstd', 'gzip'])
def test_declared_codec_is_decompressed_hashed_and_sparse(servers, options, image,
                                                          tmp_path, codec):
    data = compressed(image, tmp_path, codec)
    server = servers(data)
    source = wrap(HttpSource(server.url), {'compression': codec})
    target = str(tmp_path / 'disk')
    result = copy(source, target, checksum=sha512(image), expected_size=len(image),
                  options=options).wait(60)

    assert result.size == len(image) and result.sparse_bytes > 0
    assert_sparse_copy(target, image)
    assert source.compressed_bytes_read == len(data) == server.bytes_sent
    assert len(data) < len(image)
    assert os.listdir(tmp_path) == ['disk']


def test_single_member_gzip_from_plain_gzip(servers, options, image, tmp_path):
    """What ``gzip`` itself writes (one member) is read too."""
    data = gzip.compress(image)
    server = servers(data)
    target = str(tmp_path / 'disk')
    copy(CompressedSource(HttpSource(server.url), 'gzip'), target,
         checksum=sha512(image), options=options).wait(60)
    assert_sparse_copy(target, image)


@pytest.mark.parametrize('codec', ['zstd', 'gzip'])
def test_dropped_connection_resumes_within_one_frame(servers, options, image,
                                                     tmp_path, codec):
    data = compressed(image, tmp_path, codec)
    starts = frame_starts(image, data, codec)
    server = servers(data)
    cut = (starts[3 * FRAME] + starts[4 * FRAME]) // 2      # inside frame 3
    server.faults.close_after = cut
    source = CompressedSource(HttpSource(server.url), codec)
    target = str(tmp_path / 'disk')
    result = copy(source, target, checksum=sha512(image), options=options).wait(60)

    assert result.retries == 1 and result.restarts_from_zero == 0
    second = server.requests[1]
    assert second.headers['Range'] == f'bytes={starts[3 * FRAME]}-'
    assert second.bytes_sent == len(data) - starts[3 * FRAME]
    refetched = server.bytes_sent - len(data)
    assert 0 < refetched <= starts[4 * FRAME] - starts[3 * FRAME]     # one frame
    with open(target, 'rb') as f:
        assert f.read() == image


CHILD = '''
import sys
from image_handlers.copy import Checksum, CopyOptions, HttpSource, copy
from image_handlers.copy.compression import CompressedSource
opts = CopyOptions(buffer_size=256 << 10, checkpoint_interval=256 << 10)
copy(CompressedSource(HttpSource(sys.argv[1]), 'zstd'), sys.argv[2],
     checksum=Checksum.parse(sys.argv[3]), options=opts).wait()
'''


def test_kill_9_then_resume_fetches_at_most_one_frame_again(servers, options, image,
                                                            tmp_path):
    data = compressed(image, tmp_path, 'zstd')
    starts = frame_starts(image, data, 'zstd')
    server = servers(data)
    # Paused in frame 4: what is in flight (one read of the decompressor, one
    # engine buffer) still lets the copy checkpoint inside frame 3.
    server.faults.pause_after = (starts[4 * FRAME] + starts[5 * FRAME]) // 2
    target = str(tmp_path / 'disk')
    env = dict(os.environ, PYTHONPATH=REPO)
    seen = kill_9_at_checkpoint([sys.executable, '-c', CHILD, server.url, target,
                                 str(sha512(image))], target, 3 * FRAME + FRAME // 2,
                                cwd=REPO, env=env)
    with open(partial_of(target) + '.json') as f:
        position = json.load(f)['position']
    # The checkpoint names the frame boundary at or before its offset.
    assert position['codec'] == 'zstd'
    assert position['offset'] <= seen < position['offset'] + FRAME
    assert starts[position['offset']] == position['compressed_offset']

    server.faults.pause_after = None
    server.resume.set()         # the killed copy's request may still send a little
    requests_before = len(server.requests)
    result = copy(CompressedSource(HttpSource(server.url), 'zstd'), target,
                  checksum=sha512(image), options=options).wait(60)

    assert result.resumed_from == seen and result.restarts_from_zero == 0
    resumed = server.requests[requests_before:]
    assert [r.headers['Range'] for r in resumed] == [
        f'bytes={position["compressed_offset"]}-']
    assert resumed[0].bytes_sent == len(data) - position['compressed_offset']
    assert_sparse_copy(target, image)
    assert os.listdir(tmp_path) == ['disk']


@pytest.mark.parametrize('codec', ['zstd', 'gzip'])
def test_corrupt_stream_is_refused_and_nothing_published(servers, options, image,
                                                         tmp_path, codec):
    data = bytearray(compressed(image, tmp_path, codec))
    starts = frame_starts(image, bytes(data), codec)
    bad_at = (starts[2 * FRAME] + starts[3 * FRAME]) // 2
    data[bad_at] ^= 0x55
    server = servers(bytes(data))
    target = str(tmp_path / 'disk')
    with pytest.raises(CompressedDataError) as err:
        copy(CompressedSource(HttpSource(server.url), codec), target,
             checksum=sha512(image), options=options).wait(60)
    assert f'corrupt {codec} data' in str(err.value)
    assert not os.path.exists(target)
    assert len(server.requests) == 1        # not retried: the bytes would not change


@pytest.mark.parametrize('codec', ['zstd', 'gzip'])
def test_stream_that_ends_early_is_refused(servers, options, image, tmp_path, codec):
    data = compressed(image, tmp_path, codec)
    starts = frame_starts(image, data, codec)
    server = servers(data[:(starts[2 * FRAME] + starts[3 * FRAME]) // 2])
    target = str(tmp_path / 'disk')
    with pytest.raises(CompressedDataError) as err:
        copy(CompressedSource(HttpSource(server.url), codec), target,
             checksum=sha512(image), options=options).wait(60)
    assert f'ends inside the frame at compressed byte {starts[2 * FRAME]}' in str(
        err.value)
    assert 'truncated' in str(err.value)
    assert not os.path.exists(target)


@pytest.mark.parametrize('declared_as, actual, looks', [
    ('zstd', 'gzip', 'gzip'), ('gzip', 'zstd', 'zstd'), ('zstd', None, 'not compressed')])
def test_declared_compression_the_bytes_do_not_match(servers, options, image,
                                                     tmp_path, declared_as, actual,
                                                     looks):
    data = compressed(image, tmp_path, actual) if actual else image
    server = servers(data)
    target = str(tmp_path / 'disk')
    with pytest.raises(CompressedDataError) as err:
        copy(wrap(HttpSource(server.url), {'compression': declared_as}), target,
             checksum=sha512(image), options=options).wait(60)
    message = str(err.value)
    assert f'declares compression={declared_as}' in message
    assert f'not {declared_as} (they look {looks})' in message
    assert os.listdir(tmp_path) == []           # nothing created, nothing kept


def test_content_encoding_gzip_is_decoded_and_ranges_are_encoded_bytes(
        servers, options, image, tmp_path):
    """A server answering a plain GET of a .gz with Content-Encoding: gzip (as
    Apache's AddEncoding does); undeclared in the metadata."""
    data = compressed(image, tmp_path, 'gzip')
    starts = frame_starts(image, data, 'gzip')
    server = servers(data)
    server.faults.headers['Content-Encoding'] = 'gzip'
    server.faults.close_after = (starts[2 * FRAME] + starts[3 * FRAME]) // 2
    source = wrap(HttpSource(server.url), {})
    target = str(tmp_path / 'disk')
    result = copy(source, target, checksum=sha512(image), options=options).wait(60)

    assert source.codec == 'gzip' and result.retries == 1
    assert server.requests[1].headers['Range'] == f'bytes={starts[2 * FRAME]}-'
    assert server.requests[0].headers['Accept-Encoding'] == 'identity'
    assert_sparse_copy(target, image)


def test_content_encoding_against_declared_compression(servers, options, image,
                                                       tmp_path):
    server = servers(compressed(image, tmp_path, 'gzip'))
    server.faults.headers['Content-Encoding'] = 'gzip'
    with pytest.raises(CompressedDataError, match='declares compression=zstd but '
                       'the server sends Content-Encoding gzip'):
        copy(wrap(HttpSource(server.url), {'compression': 'zstd'}),
             str(tmp_path / 'disk'), checksum=sha512(image), options=options).wait(60)


def test_plain_http_source_still_refuses_content_encoding(servers, options, image,
                                                          tmp_path):
    """Without the wrapper nothing decodes, so an encoded body is refused."""
    server = servers(compressed(image, tmp_path, 'gzip'))
    server.faults.headers['Content-Encoding'] = 'gzip'
    with pytest.raises(exceptions.SourceError, match='Content-Encoding gzip'):
        copy(HttpSource(server.url), str(tmp_path / 'disk'), checksum=sha512(image),
             options=options).wait(60)


def test_undeclared_compressed_bytes_are_not_decompressed(servers, options, image,
                                                          tmp_path, caplog):
    data = compressed(image, tmp_path, 'zstd')
    server = servers(data)
    target = str(tmp_path / 'disk')
    caplog.set_level(logging.WARNING, logger='image_handlers.copy.compression')
    with pytest.raises(exceptions.ChecksumMismatch):
        copy(wrap(HttpSource(server.url), {}), target, checksum=sha512(image),
             options=options).wait(60)
    assert not os.path.exists(target)
    assert any('starts like zstd, but no compression is declared' in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize('metadata, expected', [
    ({}, None), ({'compression': 'ZSTD'}, 'zstd'), ({'compression': 'none'}, None),
    ({'compression': 'x-gzip'}, 'gzip')])
def test_declared_reads_location_metadata(metadata, expected):
    assert declared(metadata) == expected


@pytest.mark.parametrize('value', ['lz4', 7, ['zstd']])
def test_unknown_declared_compression_is_refused_with_the_choices(value):
    with pytest.raises(exceptions.InvalidLocation, match='use one of zstd, gzip'):
        declared({'compression': value})


def test_compress_image_never_replaces_an_output(tmp_path):
    src, dst = tmp_path / 'raw', tmp_path / 'out.zst'
    src.write_bytes(b'x' * 1000)
    dst.write_bytes(b'keep')
    with pytest.raises(FileExistsError, match='not replaced'):
        compress_image.compress(str(src), str(dst))
    assert dst.read_bytes() == b'keep'
    assert sorted(os.listdir(tmp_path)) == ['out.zst', 'raw']


MISSING = """
import sys
sys.modules['pyzstd'] = None        # blocks the import, as in a venv without it
from image_handlers import exceptions
from image_handlers.copy import HttpSource
from image_handlers.copy.compression import CompressedSource, missing_library
assert missing_library('gzip') is None
try:
    CompressedSource(HttpSource('http://127.0.0.1:9/image.zst'), 'zstd')
except exceptions.ConfigError as exc:
    print(exc)
"""


def test_zstd_without_its_library_is_a_clear_error_before_any_request():
    """pyzstd made unimportable in a child process (as in Nova's virtualenv, which
    installs image_handlers without its requirements)."""
    proc = subprocess.run([sys.executable, '-c', MISSING], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'decoding zstd needs the pyzstd package' in proc.stdout, proc.stdout
