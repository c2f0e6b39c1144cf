"""One transfer per image per host, whatever the targets: a copy that waited for the
image's lock while another copy published a DIFFERENT target makes its disk from
that file, not from the source (the server counts what it sent)."""
from __future__ import annotations

import logging
import os

from image_handlers.copy import CopyOptions, copy
from tests.copy.helpers import sha512, wait_for

MiB = 1 << 20


def _opts(options, tmp_path) -> CopyOptions:
    return CopyOptions(**{**options.__dict__, 'lock_dir': str(tmp_path / 'locks')})


def _waiting(caplog) -> bool:
    return any('waiting for lock' in r.getMessage() for r in caplog.records)


def _first_then_second(server, opts, image, tmp_path, caplog, checksum=True):
    server.faults.pause_after = 1 * MiB
    kw = dict(checksum=sha512(image) if checksum else None, expected_size=len(image),
              options=opts, lock_name='image-9')
    first = copy(server.url, str(tmp_path / 'disk-1'), **kw)
    wait_for(lambda: first.progress[0] == 1 * MiB, 'the first copy to start')
    second = copy(server.url, str(tmp_path / 'disk-2'), **kw)
    wait_for(lambda: _waiting(caplog), 'the second copy to wait for the lock')
    server.faults.pause_after = None
    server.resume.set()
    return first.wait(60), second


def test_a_waiting_copy_to_another_target_reads_the_published_file(
        servers, options, image, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='image_handlers.copy')
    server = servers(image)
    one, second = _first_then_second(server, _opts(options, tmp_path), image, tmp_path,
                                     caplog)
    two = second.wait(60)

    assert one.bytes_transferred == len(image) and one.copied_from is None
    assert two.copied_from == str(tmp_path / 'disk-1')
    assert two.bytes_transferred == 0 and two.checksum == sha512(image)
    assert len(server.requests) == 1 and server.bytes_sent == len(image)
    for name in ('disk-1', 'disk-2'):
        assert (tmp_path / name).read_bytes() == image
    assert not os.path.samefile(tmp_path / 'disk-1', tmp_path / 'disk-2')
    assert sorted(os.listdir(tmp_path)) == ['disk-1', 'disk-2', 'locks']


def test_a_published_file_written_since_is_not_read(servers, options, image,
                                                    tmp_path, caplog):
    """The first disk is in use (its mtime moved): the source is asked again."""
    caplog.set_level(logging.INFO, logger='image_handlers.copy')
    server = servers(image)
    opts = _opts(options, tmp_path)
    copy(server.url, str(tmp_path / 'disk-1'), checksum=sha512(image),
         expected_size=len(image), options=opts, lock_name='image-9').wait(60)
    with open(tmp_path / 'disk-1', 'r+b') as f:
        f.write(b'\x01')                    # a guest wrote to its disk
    two = copy(server.url, str(tmp_path / 'disk-2'), checksum=sha512(image),
               expected_size=len(image), options=opts, lock_name='image-9').wait(60)
    assert two.copied_from is None and two.bytes_transferred == len(image)
    assert (tmp_path / 'disk-2').read_bytes() == image
    assert len(server.requests) == 2


def test_without_a_checksum_nothing_local_is_trusted(servers, options, image,
                                                     tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='image_handlers.copy')
    server = servers(image)
    one, second = _first_then_second(server, _opts(options, tmp_path), image, tmp_path,
                                     caplog, checksum=False)
    two = second.wait(60)
    assert two.copied_from is None and two.bytes_transferred == len(image)
    assert len(server.requests) == 2
