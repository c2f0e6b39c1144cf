"""verdicts: hash once per file identity; any change in place means hash again."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import stat
import uuid

import pytest

from image_handlers import exceptions
from image_handlers.copy.cancel import CancelToken
from image_handlers.shared_fs import verdicts
from image_handlers.shared_fs.errors import Refused
from image_handlers.shared_fs.paths import identity_of
from image_handlers.trust import verdicts as sealed

DATA = random.Random(11).randbytes(300_001)
SHA512 = 'sha512:' + hashlib.sha512(DATA).hexdigest()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / 'image'
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    yield path, fd
    os.close(fd)


@pytest.fixture
def store(tmp_path):
    """No racy window: the test files were all written just now."""
    return verdicts.VerdictStore(tmp_path / 'state', racy_seconds=0)


def read_doc(store, image_id):
    """The verdict document, unsealed (as the store reads it)."""
    return sealed.read_sealed(store.path(image_id), store.state_dir)


def write_doc(store, image_id, doc):
    """Write ``doc`` sealed with the host key: an edit the seal cannot catch
    (it reaches the strict parser)."""
    sealed.write_sealed(store.path(image_id), doc, store.state_dir)


def now(fd):
    return identity_of(os.fstat(fd))


def test_record_then_lookup(store, image):
    path, fd = image
    image_id = str(uuid.uuid4())
    assert store.lookup(image_id, SHA512, now(fd)) is None
    recorded = store.record(image_id, SHA512, now(fd))
    found = store.lookup(image_id, SHA512.upper().replace('SHA512', 'sha512'), now(fd))
    assert found == recorded and found.identity() == now(fd)
    assert os.stat(store.path(image_id)).st_mode & 0o777 == 0o600
    assert os.stat(store.directory).st_mode & 0o777 == 0o700
    assert store.path(image_id) == os.path.join(store.directory, f'{image_id}.json')
    doc = read_doc(store, image_id)
    assert doc['image_id'] == image_id and doc['verdicts'][0]['checksum'] == SHA512
    assert [n for n in os.listdir(store.directory)] == [f'{image_id}.json']


def test_another_hash_is_not_this_verdict(store, image):
    _, fd = image
    store.record('img', SHA512, now(fd))
    md5 = 'md5:' + hashlib.md5(DATA).hexdigest()
    assert store.lookup('img', md5, now(fd)) is None
    assert store.lookup('img', 'sha512:' + '0' * 128, now(fd)) is None
    assert store.lookup('other-image', SHA512, now(fd)) is None


@pytest.mark.parametrize('change', ['write', 'write_and_restore_mtime', 'chmod',
                                    'truncate_and_extend', 'replace', 'hardlink'])
def test_file_changed_in_place_is_not_reused(store, image, change):
    path, fd = image
    store.record('img', SHA512, now(fd))
    st = os.stat(path)
    if change.startswith('write'):
        with open(path, 'r+b') as f:
            f.seek(1000)
            f.write(b'X')
        if change == 'write_and_restore_mtime':
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            assert os.stat(path).st_mtime_ns == st.st_mtime_ns
    elif change == 'chmod':
        os.chmod(path, 0o400)
    elif change == 'truncate_and_extend':
        os.truncate(path, 10)
        os.truncate(path, len(DATA))
    elif change == 'replace':
        new = path.with_name('new')
        new.write_bytes(DATA)
        os.replace(new, path)
    else:
        os.link(path, path.with_name('pin'))
    current = path.open('rb')
    with current:
        assert store.lookup('img', SHA512, now(current.fileno())) is None


def test_hand_edited_verdict_file_is_ignored_and_reverified(store, image, caplog):
    _, fd = image
    verdict, reused = verdicts.verified(store, fd, 'img', len(DATA), SHA512)
    assert not reused
    with open(store.path('img'), 'w') as f:
        f.write('{"version": 1, "verdicts": [ oops')
    with caplog.at_level(logging.WARNING):
        assert store.lookup('img', SHA512, now(fd)) is None
    assert 'does not parse' in caplog.text and store.path('img') in caplog.text
    verdict2, reused = verdicts.verified(store, fd, 'img', len(DATA), SHA512)
    assert not reused and verdict2.identity() == verdict.identity()
    assert verdicts.verified(store, fd, 'img', len(DATA), SHA512)[1]   # repaired


@pytest.mark.parametrize('edit', [
    lambda d: d['verdicts'][0].update(size=str(d['verdicts'][0]['size'])),
    lambda d: d['verdicts'][0].update(st_ino=True),
    lambda d: d['verdicts'][0].update(checksum='sha512:nothex'),
    lambda d: d['verdicts'][0].update(checksum='rot13:abcd'),
    lambda d: d.update(image_id='another'),
    lambda d: d.update(version=99),
    lambda d: d.update(verdicts={'a': 1}),
    lambda d: d['verdicts'].__setitem__(0, 'a string'),
    lambda d: d['verdicts'][0].pop('ctime_ns'),
])
def test_malformed_edits_are_ignored(store, image, edit, caplog):
    _, fd = image
    store.record('img', SHA512, now(fd))
    doc = read_doc(store, 'img')
    edit(doc)
    write_doc(store, 'img', doc)
    with caplog.at_level(logging.WARNING):
        assert store.lookup('img', SHA512, now(fd)) is None
    assert 'ignoring verdict file' in caplog.text


def test_an_edit_without_the_host_key_does_not_unseal(store, image, caplog):
    """Hand-edited to claim the file as it is now: the seal catches it."""
    _, fd = image
    store.record('img', SHA512, now(fd))
    sealed_doc = json.loads(open(store.path('img')).read())
    body = json.loads(sealed_doc['body'])
    body['verdicts'][0]['checksum'] = 'sha512:' + 'ab' * 64
    sealed_doc['body'] = json.dumps(body, sort_keys=True, separators=(',', ':'))
    with open(store.path('img'), 'w') as f:
        json.dump(sealed_doc, f)
    with caplog.at_level(logging.WARNING):
        assert store.lookup('img', 'sha512:' + 'ab' * 64, now(fd)) is None
    assert 'seal does not match' in caplog.text


def test_edit_claiming_another_identity_misses(store, image):
    _, fd = image
    store.record('img', SHA512, now(fd))
    doc = read_doc(store, 'img')
    doc['verdicts'][0]['mtime_ns'] += 1
    write_doc(store, 'img', doc)
    assert store.lookup('img', SHA512, now(fd)) is None


def test_verdict_file_others_could_write_is_ignored(store, image, caplog):
    _, fd = image
    store.record('img', SHA512, now(fd))
    os.chmod(store.path('img'), 0o666)
    with caplog.at_level(logging.WARNING):
        assert store.lookup('img', SHA512, now(fd)) is None
    assert 'another user' in caplog.text


def test_verdict_file_that_is_a_symlink_is_ignored(store, image, tmp_path):
    _, fd = image
    store.record('img', SHA512, now(fd))
    os.rename(store.path('img'), tmp_path / 'elsewhere.json')
    os.symlink(tmp_path / 'elsewhere.json', store.path('img'))
    assert store.lookup('img', SHA512, now(fd)) is None


def test_one_verdict_per_file_and_a_bounded_list(store, image):
    _, fd = image
    dev, ino, size, m, c = now(fd)
    store.record('img', SHA512, (dev, ino, size, m, c))
    store.record('img', SHA512, (dev, ino, size, m + 1, c + 1))
    doc = read_doc(store, 'img')
    assert len(doc['verdicts']) == 1 and doc['verdicts'][0]['mtime_ns'] == m + 1
    for i in range(verdicts.MAX_VERDICTS + 3):
        store.record('img', SHA512, (dev, ino + 1 + i, size, m, c))
    doc = read_doc(store, 'img')
    assert len(doc['verdicts']) == verdicts.MAX_VERDICTS


@pytest.mark.parametrize('bad', ['', '.hidden', 'a/b', '..', 'a\x00b'])
def test_image_ids_that_cannot_name_a_file(store, bad):
    with pytest.raises(ValueError):
        store.path(bad)


@pytest.mark.parametrize('algo', ['sha512', 'sha256', 'md5'])
def test_verify_file(image, algo):
    _, fd = image
    os.lseek(fd, 123, os.SEEK_SET)
    checksum = f'{algo}:{hashlib.new(algo, DATA).hexdigest()}'
    identity = verdicts.verify_file(fd, len(DATA), checksum, buffer_size=4096)
    assert identity == now(fd)
    assert os.lseek(fd, 0, os.SEEK_CUR) == 123          # pread: offset untouched


def test_verify_file_mismatch(image):
    _, fd = image
    wrong = 'sha512:' + hashlib.sha512(DATA[:-1] + b'!').hexdigest()
    with pytest.raises(Refused) as err:
        verdicts.verify_file(fd, len(DATA), wrong, description='the file')
    assert 'not the image\'s data' in err.value.reason
    assert hashlib.sha512(DATA).hexdigest() in err.value.reason


def test_verify_file_wrong_size_and_bad_checksum(image):
    _, fd = image
    with pytest.raises(Refused) as err:
        verdicts.verify_file(fd, len(DATA) + 1, SHA512)
    assert str(len(DATA)) in err.value.reason
    with pytest.raises(Refused):
        verdicts.verify_file(fd, len(DATA), 'sha512:xyz')


def test_verify_file_changed_while_hashed(image, monkeypatch):
    path, fd = image
    real_read = verdicts._read_all

    def read_while_someone_writes(fd, length, digests, buffer_size, cancel,
                                  description):
        with open(path, 'r+b') as f:
            f.write(b'Z')
        return real_read(fd, length, digests, buffer_size, cancel, description)
    monkeypatch.setattr(verdicts, '_read_all', read_while_someone_writes)
    with pytest.raises(Refused) as err:
        verdicts.verify_file(fd, len(DATA), SHA512, description='the file')
    assert 'changed while it was hashed' in err.value.reason
    assert 'mtime_ns' in err.value.reason


def test_verify_file_of_a_directory_or_unreadable_fd(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(Refused):
            verdicts.verify_file(fd, 0, SHA512)
    finally:
        os.close(fd)
    (tmp_path / 'w').write_bytes(DATA)
    fd = os.open(tmp_path / 'w', os.O_WRONLY)
    try:
        with pytest.raises(Refused) as err:
            verdicts.verify_file(fd, len(DATA), SHA512)
        assert 'cannot be read' in err.value.reason
    finally:
        os.close(fd)


def test_verify_file_cancelled(image):
    _, fd = image
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(exceptions.CopyCancelled):
        verdicts.verify_file(fd, len(DATA), SHA512, cancel=cancel)


def test_verified_reuses_then_reverifies_after_a_change(store, image):
    path, fd = image
    first, reused = verdicts.verified(store, fd, 'img', len(DATA), SHA512)
    assert not reused
    again, reused = verdicts.verified(store, fd, 'img', len(DATA), SHA512)
    assert reused and again == first
    os.chmod(path, stat.S_IRUSR)                # ctime only
    third, reused = verdicts.verified(store, fd, 'img', len(DATA), SHA512)
    assert not reused and third.ctime_ns != first.ctime_ns
    with open(path, 'r+b') as f:
        f.write(b'?')
    with pytest.raises(Refused):
        verdicts.verified(store, fd, 'img', len(DATA), SHA512)


def test_a_verdict_recorded_right_after_a_change_is_not_reused(tmp_path, image):
    path, fd = image
    store = verdicts.VerdictStore(tmp_path / 'state')       # the default window
    first, reused = verdicts.verified(store, fd, 'img', len(DATA), SHA512)
    assert not reused
    assert not verdicts.verified(store, fd, 'img', len(DATA), SHA512)[1]
    # the same verdict, as if recorded long after the file's last change
    doc = read_doc(store, 'img')
    doc['verdicts'][0]['verified_at'] += verdicts.RACY_SECONDS
    write_doc(store, 'img', doc)
    assert verdicts.verified(store, fd, 'img', len(DATA), SHA512)[1]
