"""Image signatures on every path, against the lab's real Keystone, Barbican,
Glance (behind keystonemiddleware) and Ceph: certificates are read from Barbican
through castellan with nova.conf's [glance] credentials, as the command line
reads them (inside Nova, the request context's: tests/nova)."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import threading
import time
import types
import uuid

import pytest
import rbd

from image_handlers import api, exceptions
from image_handlers.chain import HandlerChain
from image_handlers.results import FAILED
from image_handlers.targets import parse_target
from tests.functional.conftest import image_bytes
from tools.lab import signing
from tools.lab.keystone import nova_conf_keystone

MiB = 1 << 20
pytestmark = pytest.mark.usefixtures('barbican_lab')


@pytest.fixture(scope='module')
def pki(keystone_lab, barbican_lab):
    """A CA, a signing certificate it issued, and an unrelated CA, all stored in
    Barbican by the nova service user (whose [glance] credentials read them)."""
    ca, ca_key = signing.make_ca()
    cert, key = signing.make_signing_cert(ca, ca_key)
    other_ca, _ = signing.make_ca('another CA')
    conf = signing.private_conf(keystone_lab)
    ctx = signing.request_context(keystone_lab, 'nova', 'service')
    return types.SimpleNamespace(
        key=key, cert=signing.store_certificate(cert, ctx, conf),
        ca=signing.store_certificate(ca, ctx, conf),
        other_ca=signing.store_certificate(other_ca, ctx, conf))


@pytest.fixture
def glance_ks(glance_ks_lab):
    return glance_ks_lab.keystone_client('nova', 'service')


@pytest.fixture
def signed_image(glance_ks, pki):
    """Upload ``data`` signed over ``signed`` (default: the data itself)."""
    created = []

    def make(data: bytes, backend: str = 'ceph', signed: bytes | None = None,
             cert: str | None = None, **extra) -> str:
        props = signing.sign(data if signed is None else signed, pki.key,
                             certificate_uuid=cert or pki.cert)
        props.update(extra)
        img = glance_ks.images.create(name=f'signed-{uuid.uuid4().hex[:8]}',
                                      disk_format='raw', container_format='bare')
        created.append(img['id'])
        glance_ks.images.upload(img['id'], io.BytesIO(data), image_size=len(data),
                                backend=backend)
        # Signed after the upload: the lab's Glance has no key manager of its own
        # to check signatures on upload with (and a bad one must get through).
        glance_ks.images.update(img['id'], **props)
        return img['id']
    yield make
    for image_id in created:
        with contextlib.suppress(Exception):
            glance_ks.images.delete(image_id)


@pytest.fixture
def conf_file(tmp_path, keystone_lab, ceph_lab, xfs_lab):
    def write(handlers: str = 'rbd_clone, stream_copy', glance: str = '',
              extra: str = '', verify: bool = True, cache_seconds: float = 0) -> str:
        path = tmp_path / f'nova-{uuid.uuid4().hex[:6]}.conf'
        text = nova_conf_keystone(keystone_lab).replace(
            '[glance]\n', f'[glance]\nverify_glance_signatures = {verify}\n' + glance,
            1)
        path.write_text(
            text + '\n[libvirt]\nimages_rbd_pool = vms\n'
            f'images_rbd_ceph_conf = {ceph_lab.conf_path}\nrbd_user = admin\n'
            f'\n[image_handlers]\nstate_dir = {tmp_path / "state"}\n'
            f'handlers = {handlers}\nkey_manager_timeout = 3\n'
            f'certificate_cache_seconds = {cache_seconds}\n'
            f'shared_fs_mounts = xfs-images:{xfs_lab.mountpoint}\n' + extra + '\n')
        return str(path)
    return write


@pytest.fixture
def disks(rbd_admin):
    names = []

    def name() -> str:
        names.append(f'sig-{uuid.uuid4().hex[:8]}')
        return names[-1]
    yield name
    with rbd_admin.open_ioctx('vms') as ioctx:
        for n in names:
            with contextlib.suppress(rbd.ImageNotFound):
                rbd.RBD().remove(ioctx, n)


def _fetch(conf_path: str, image_id: str, target: str, disk_format: str = 'raw',
           **request):
    conf = api.make_conf([conf_path])
    chain = HandlerChain(conf)
    return chain.fetch(chain.request(image_id, parse_target(target, disk_format),
                                     **request))


def test_signed_clone_reads_the_snapshot_once_then_clones_are_o1(
        signed_image, conf_file, disks, caplog, tmp_path):
    image_id = signed_image(image_bytes(8 * MiB, seed=91))
    conf = conf_file()
    caplog.set_level(logging.INFO)
    first = _fetch(conf, image_id, f'rbd:vms/{disks()}')
    assert first.handler == 'rbd_clone' and first.bytes_copied == 0
    assert 'signature' in first.verified and 'read now' in first.verified
    assert caplog.text.count('read once') == 1
    verdict_dir = tmp_path / 'state' / 'rbd-verdicts'
    verdict = verdict_dir / f'{image_id}.json'
    assert os.stat(verdict).st_mode & 0o777 == 0o600

    caplog.clear()
    second = _fetch(conf, image_id, f'rbd:vms/{disks()}')
    assert second.handler == 'rbd_clone' and 'verified before' in second.verified
    assert 'read once' not in caplog.text


def test_a_bad_signature_is_refused_on_every_path(signed_image, conf_file, disks,
                                                  rbd_admin, tmp_path):
    """Hash right (Glance hashed what was uploaded), signature over other bytes:
    the clone is refused and so is the copy; no disk is left; the snapshot is
    refused from then on without reading it again."""
    data = image_bytes(4 * MiB, seed=92)
    image_id = signed_image(data, signed=data[:-1] + b'X')
    conf, name = conf_file(), disks()
    with pytest.raises(exceptions.NoHandlerAvailable) as err:
        _fetch(conf, image_id, f'rbd:vms/{name}')
    (clone,) = [a for a in err.value.result.attempts if a.handler == 'rbd_clone']
    assert clone.outcome == FAILED and 'SignatureMismatch' in clone.reason
    with rbd_admin.open_ioctx('vms') as ioctx:
        assert name not in rbd.RBD().list(ioctx)
    with pytest.raises(exceptions.NoHandlerAvailable) as again:
        _fetch(conf, image_id, f'rbd:vms/{disks()}')
    (clone,) = [a for a in again.value.result.attempts if a.handler == 'rbd_clone']
    assert clone.outcome != FAILED and 'img_signature' in clone.reason  # not re-read
    with pytest.raises(exceptions.NoHandlerAvailable) as copied:
        _fetch(conf, image_id, str(tmp_path / 'disk.raw'))
    copies = [a for a in copied.value.result.attempts if a.handler == 'stream_copy'
              and a.outcome == FAILED]
    assert copies and all('SignatureMismatch' in a.reason for a in copies)
    assert not any(p.name.startswith('disk.raw') for p in tmp_path.iterdir())


def test_a_snapshot_made_again_under_the_same_name_is_verified_again(
        signed_image, conf_file, disks, rbd_admin, caplog):
    data = image_bytes(4 * MiB, seed=93)
    image_id = signed_image(data)
    conf = conf_file(handlers='rbd_clone')
    first_disk = disks()
    assert 'read now' in _fetch(conf, image_id, f'rbd:vms/{first_disk}').verified
    with rbd_admin.open_ioctx('vms') as vms:
        rbd.RBD().remove(vms, first_disk)
    with rbd_admin.open_ioctx('images') as images, \
            contextlib.closing(rbd.Image(images, image_id)) as img:
        img.unprotect_snap('snap')
        img.remove_snap('snap')
        img.write(b'\0' * 4096, 0)               # other bytes, same size
        img.create_snap('snap')
        img.protect_snap('snap')
    caplog.set_level(logging.INFO)
    with pytest.raises(exceptions.NoHandlerAvailable) as err:
        _fetch(conf, image_id, f'rbd:vms/{disks()}')
    (attempt,) = [a for a in err.value.result.attempts if a.handler == 'rbd_clone']
    assert attempt.outcome == FAILED and 'Mismatch' in attempt.reason


def test_stream_copy_verifies_the_signature_in_the_copy_pass(signed_image, conf_file,
                                                             tmp_path):
    data = image_bytes(6 * MiB, seed=94)
    image_id = signed_image(data, backend='fs')
    result = _fetch(conf_file(handlers='stream_copy'), image_id,
                    str(tmp_path / 'disk.raw'))
    assert result.handler == 'stream_copy' and 'signature' in result.verified
    assert (tmp_path / 'disk.raw').read_bytes() == data


@pytest.fixture
def xfs_targets(xfs_lab):
    """A directory for disks on the XFS mount (reflink needs source and disk on
    one file system); removed after the test."""
    import shutil
    path = xfs_lab.mountpoint / f'sig-{uuid.uuid4().hex[:8]}'
    path.mkdir()
    yield path
    shutil.rmtree(path)


def test_a_shared_file_changed_after_its_verdict_is_verified_again(
        signed_image, conf_file, glance_ks, xfs_targets):
    data = image_bytes(4 * MiB, seed=95)
    image_id = signed_image(data, backend='xfs')
    time.sleep(2.1)     # older than the verdicts' racy window (shared_fs.verdicts)
    conf = conf_file(handlers='shared_fs', extra='shared_fs_methods = reflink\n')
    first = _fetch(conf, image_id, str(xfs_targets / 'a.raw'))
    assert first.handler == 'shared_fs' and 'sig:' in first.verified
    assert 'hashed now' in first.verified
    again = _fetch(conf, image_id, str(xfs_targets / 'b.raw'))
    assert 'verdict reused' in again.verified
    path = glance_ks.images.get(image_id)['direct_url'][len('file://'):]
    with open(path, 'r+b') as f:                  # same size, other bytes
        f.write(b'\xff' * 512)
    with pytest.raises(exceptions.NoHandlerAvailable) as err:
        _fetch(conf, image_id, str(xfs_targets / 'c.raw'))
    assert 'not the image' in str(err.value)
    assert not (xfs_targets / 'c.raw').exists()


def test_a_certificate_barbican_does_not_have_is_refused(signed_image, conf_file,
                                                         disks):
    image_id = signed_image(image_bytes(1 * MiB, seed=96), cert=str(uuid.uuid4()))
    with pytest.raises(exceptions.Untrusted) as err:
        _fetch(conf_file(), image_id, f'rbd:vms/{disks()}')
    assert 'is not in the key manager' in str(err.value)


def test_trusted_certificates_are_checked_as_nova_checks_them(
        signed_image, conf_file, disks, pki):
    image_id = signed_image(image_bytes(1 * MiB, seed=97))
    conf = conf_file()
    ok = _fetch(conf, image_id, f'rbd:vms/{disks()}', trusted_certs=[pki.ca])
    assert ok.handler == 'rbd_clone'
    with pytest.raises(exceptions.Untrusted) as err:
        _fetch(conf, image_id, f'rbd:vms/{disks()}', trusted_certs=[pki.other_ca])
    assert 'is not trusted' in str(err.value)
    validating = conf_file(glance='enable_certificate_validation = true\n')
    with pytest.raises(exceptions.Untrusted, match='no trusted certificate ids'):
        _fetch(validating, image_id, f'rbd:vms/{disks()}')


@pytest.fixture
def silent_port():
    """A port that accepts connections and never answers (a hung service)."""
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_key_manager_that_hangs_is_a_bounded_wait_and_a_clear_error(
        signed_image, conf_file, disks, silent_port):
    image_id = signed_image(image_bytes(1 * MiB, seed=98))
    hung = conf_file()
    with open(hung, 'a') as f:
        f.write(f'\n[barbican]\nbarbican_endpoint = http://127.0.0.1:{silent_port}\n')
    with pytest.raises(exceptions.Untrusted) as err:
        _fetch(hung, image_id, f'rbd:vms/{disks()}')
    assert 'did not answer within 3 s' in str(err.value)
    assert 'key_manager_timeout' in str(err.value)


def test_a_certificate_read_is_kept_for_a_while_so_repeated_disks_skip_barbican(
        signed_image, conf_file, disks, silent_port):
    """certificate_cache_seconds: the second disk's certificate comes from memory,
    so a key manager that no longer answers does not stop it (with the cache off,
    the same request waits for it and fails: the test above)."""
    image_id = signed_image(image_bytes(1 * MiB, seed=107))
    assert _fetch(conf_file(cache_seconds=60), image_id,
                  f'rbd:vms/{disks()}').handler == 'rbd_clone'
    hung = conf_file(cache_seconds=60)
    with open(hung, 'a') as f:
        f.write(f'\n[barbican]\nbarbican_endpoint = http://127.0.0.1:{silent_port}\n')
    # Served from memory: asking the key manager would have failed (key_manager_timeout).
    assert _fetch(hung, image_id, f'rbd:vms/{disks()}').handler == 'rbd_clone'


def test_a_key_manager_that_is_down_is_a_clear_error(signed_image, conf_file, disks):
    image_id = signed_image(image_bytes(1 * MiB, seed=103))
    closed = socket.socket()
    closed.bind(('127.0.0.1', 0))
    port = closed.getsockname()[1]
    closed.close()                               # nothing listens there
    down = conf_file()
    with open(down, 'a') as f:
        f.write(f'\n[barbican]\nbarbican_endpoint = http://127.0.0.1:{port}\n')
    with pytest.raises(exceptions.Untrusted) as err:
        _fetch(down, image_id, f'rbd:vms/{disks()}')
    assert 'the key manager could not give signing certificate' in str(err.value)


def test_keystone_that_hangs_is_a_bounded_wait_and_a_clear_error(
        signed_image, conf_file, disks, silent_port, keystone_lab):
    image_id = signed_image(image_bytes(1 * MiB, seed=99))
    hung = conf_file(glance='timeout = 2\n')
    text = open(hung).read().replace(keystone_lab.auth_url,
                                     f'http://127.0.0.1:{silent_port}/v3')
    open(hung, 'w').write(text)
    with pytest.raises(exceptions.ImageHandlerError) as err:
        _fetch(hung, image_id, f'rbd:vms/{disks()}')
    assert 'Glance' in str(err.value) or 'endpoint' in str(err.value)


def test_a_verdict_edited_by_hand_is_ignored_and_the_snapshot_read_again(
        signed_image, conf_file, disks, tmp_path, caplog):
    image_id = signed_image(image_bytes(2 * MiB, seed=100))
    conf = conf_file(handlers='rbd_clone')
    assert 'read now' in _fetch(conf, image_id, f'rbd:vms/{disks()}').verified
    path = tmp_path / 'state' / 'rbd-verdicts' / f'{image_id}.json'
    sealed = json.loads(path.read_text())
    body = json.loads(sealed['body'])
    body['good'] = {k + 'x': v for k, v in body['good'].items()}
    sealed['body'] = json.dumps(body)
    path.write_text(json.dumps(sealed))
    caplog.set_level(logging.INFO)
    again = _fetch(conf, image_id, f'rbd:vms/{disks()}')
    assert 'read now' in again.verified
    assert 'seal does not match' in caplog.text


# -- iscsi_cor: a signed image's LUN is read once before any disk is made of it -------
@pytest.fixture(scope='module')
def tgt():
    from tools.lab.tgt import TgtService
    service = TgtService('tgt-sig').start()
    yield service
    service.stop()


@pytest.fixture
def signed_lun(signed_image, glance_ks_lab, tgt, tmp_path):
    """A signed image whose only location is rewritten in Glance's database to a
    LUN exporting ``lun_data`` (default: the image's bytes)."""
    import sqlite3
    made = []

    def make(data: bytes, lun_data: bytes | None = None, signed: bytes | None = None):
        image_id = signed_image(data, backend='fs', signed=signed)
        name = f'sig{len(made)}-{image_id[:8]}'
        backing = tmp_path / f'{name}.raw'
        backing.write_bytes(data if lun_data is None else lun_data)
        export = tgt.export(name, backing)
        made.append(name)
        db = sqlite3.connect(glance_ks_lab.workdir / 'glance.sqlite')
        with db:
            db.execute('update image_locations set value = ?, meta_data = ? where '
                       'image_id = ? and deleted = 0', (export.url, '{}', image_id))
        db.close()
        return image_id
    yield make
    for name in made:
        tgt.unexport(name)


def _lun_conf(conf_file, tgt) -> str:
    return conf_file(handlers='iscsi_cor', extra=(
        f'iscsi_allowed_portals = {tgt.portal}\niscsi_timeout = 5\n'
        'iscsi_handover_timeout = 2\nread_timeout = 5\n'))


def test_a_signed_lun_is_read_once_before_any_disk_then_disks_are_o1(
        signed_lun, conf_file, tgt, tmp_path):
    from image_handlers.jobs import runner
    data = image_bytes(6 * MiB, seed=101)
    image_id = signed_lun(data)
    conf = _lun_conf(conf_file, tgt)
    first = _fetch(conf, image_id, str(tmp_path / 'a.qcow2'), 'qcow2')
    assert first.handler == 'iscsi_cor' and first.bytes_copied == 0
    assert 'signature' in first.verified and 'before the disk was made' in first.verified
    assert first.details['verification'] == 'done'
    again = api.explain(api.make_conf([conf]), image_id, str(tmp_path / 'b.qcow2'),
                        disk_format='qcow2')
    (verdict,) = [a for a in again.attempts if a.handler == 'iscsi_cor']
    assert 'LUN verified before' in verdict.reason
    stored = api.make_conf([conf])
    runner.wait(stored, first.job, timeout=120)
    assert runner.store(stored).get(first.job).state == 'done'


def test_a_signed_lun_is_pre_cached_by_reading_it_once_inside_the_host_limit(
        signed_lun, conf_file, tgt, tmp_path):
    """Pre-cache (chain.prepare, what Nova's cache_images calls) of a signed
    image's LUN reads it once to prove the signature and keeps the verdict, so the
    first disk is O(1); the read is image traffic and takes the host's bucket (it
    took none). The bucket's shared state, a GCRA arrival time on the monotonic
    clock, moves size/rate past the read's start for the bytes admitted: arithmetic,
    not timing (a slow machine only pushes it later). Without the limit the file is
    never written."""
    import struct
    from image_handlers.copy.conf import copy_options
    from image_handlers.copy.ratelimit import STATE_FILE
    size, rate = 6 * MiB, 8 * MiB
    image_id = signed_lun(image_bytes(size, seed=104))
    conf = _lun_conf(conf_file, tgt)
    with open(conf, 'a') as f:
        f.write(f'bandwidth_limit = {rate}\n')     # the file ends in [image_handlers]
    stored = api.make_conf([conf])
    state = os.path.join(copy_options(stored.image_handlers).lock_dir, STATE_FILE)
    assert not os.path.exists(state)
    chain = HandlerChain(stored)
    start = time.monotonic()
    ready = chain.prepare(chain.request(image_id, parse_target(
        str(tmp_path / 'a.qcow2'), 'qcow2'), purpose='precache'))
    assert ready.handler == 'iscsi_cor' and 'verified' in ready.method, ready
    assert not os.path.exists(tmp_path / 'a.qcow2')         # no disk made
    with open(state, 'rb') as f:
        (arrival,) = struct.unpack('=d', f.read(8))
    assert arrival >= start + size / rate, (arrival - start, size / rate)
    first = _fetch(conf, image_id, str(tmp_path / 'a.qcow2'), 'qcow2')
    assert 'LUN verified before' in first.verified, first.verified


def test_a_lun_that_does_not_carry_the_signature_makes_no_disk(
        signed_lun, conf_file, tgt, tmp_path):
    data = image_bytes(4 * MiB, seed=102)
    image_id = signed_lun(data, signed=data[:-1] + b'?')
    conf = _lun_conf(conf_file, tgt)
    with pytest.raises(exceptions.NoHandlerAvailable) as err:
        _fetch(conf, image_id, str(tmp_path / 'a.qcow2'), 'qcow2')
    (attempt,) = [a for a in err.value.result.attempts if a.handler == 'iscsi_cor']
    assert attempt.outcome == FAILED and 'SignatureMismatch' in attempt.reason
    assert not (tmp_path / 'a.qcow2').exists()
    with pytest.raises(exceptions.NoHandlerAvailable) as again:
        _fetch(conf, image_id, str(tmp_path / 'b.qcow2'), 'qcow2')
    (attempt,) = [a for a in again.value.result.attempts if a.handler == 'iscsi_cor']
    assert attempt.outcome != FAILED and 'img_signature' in attempt.reason


# -- recorded hashes of any algorithm, and the locations API as the service user ------
@pytest.fixture
def unsigned_image(glance_ks):
    made = []

    def make(data: bytes, backend: str = 'fs') -> str:
        img = glance_ks.images.create(name=f'hash-{uuid.uuid4().hex[:8]}',
                                      disk_format='raw', container_format='bare')
        made.append(img['id'])
        glance_ks.images.upload(img['id'], io.BytesIO(data), image_size=len(data),
                                backend=backend)
        return img['id']
    yield make
    for image_id in made:
        with contextlib.suppress(Exception):
            glance_ks.images.delete(image_id)


def _record_hash(glance_ks_lab, image_id: str, algo: str, value: str) -> None:
    """What a Glance with ``hashing_algorithm = ALGO`` records (its database)."""
    import sqlite3
    db = sqlite3.connect(glance_ks_lab.workdir / 'glance.sqlite')
    with db:
        db.execute('update images set os_hash_algo = ?, os_hash_value = ? where id = ?',
                   (algo, value, image_id))
    db.close()


@pytest.mark.parametrize('algo', ['sha3_512', 'blake2b'])
def test_a_hash_of_another_algorithm_is_verified_with_it(
        unsigned_image, glance_ks_lab, conf_file, tmp_path, algo):
    import hashlib
    data = image_bytes(3 * MiB, seed=104)
    image_id = unsigned_image(data)
    _record_hash(glance_ks_lab, image_id, algo, hashlib.new(algo, data).hexdigest())
    conf = conf_file(handlers='stream_copy', verify=False)
    result = _fetch(conf, image_id, str(tmp_path / 'disk.raw'))
    assert result.verified == f'{algo}:{hashlib.new(algo, data).hexdigest()}'
    _record_hash(glance_ks_lab, image_id, algo, hashlib.new(algo, b'other').hexdigest())
    with pytest.raises(exceptions.NoHandlerAvailable, match='checksum mismatch'):
        _fetch(conf, image_id, str(tmp_path / 'disk2.raw'))


def test_an_unknown_hash_algorithm_is_refused_not_checked_with_md5(
        unsigned_image, glance_ks_lab, conf_file, tmp_path):
    image_id = unsigned_image(image_bytes(1 * MiB, seed=105))
    _record_hash(glance_ks_lab, image_id, 'whirlpool', 'ab' * 64)
    conf = conf_file(handlers='stream_copy', verify=False)
    with pytest.raises(exceptions.Untrusted) as err:
        _fetch(conf, image_id, str(tmp_path / 'disk.raw'))
    assert 'whirlpool' in str(err.value) and 'md5' in str(err.value)
    assert not list(tmp_path.glob('disk.raw*'))


def test_the_locations_api_is_asked_with_the_service_users_own_token(
        unsigned_image, conf_file, tmp_path):
    """Glance 33 lets only a token with the service (or admin) role read
    GET /v2/images/ID/locations; [glance] is the nova service user's."""
    image_id = unsigned_image(image_bytes(1 * MiB, seed=106))
    result = api.explain(api.make_conf([conf_file(handlers='stream_copy',
                                                  verify=False)]),
                         image_id, str(tmp_path / 'disk.raw'))
    assert 'locations API: 1 location(s)' in result.details['location_sources']


def test_the_command_line_takes_trusted_certificates_like_an_instance(
        signed_image, conf_file, cli, pki):
    image_id = signed_image(image_bytes(1 * MiB, seed=108))
    conf = conf_file(verify=False)      # the trusted certificates alone ask for it
    good = cli('explain', image_id, 'rbd:vms/never-made', '--config-file', conf,
               '--trusted-cert', pki.ca)
    assert good.rc == 0, good
    assert 'signature' in good.out and 'the snapshot is read once first' in good.out
    bad = cli('explain', image_id, 'rbd:vms/never-made', '--config-file', conf,
              '--trusted-cert', pki.other_ca)
    assert bad.rc == 2, bad
    assert 'is not trusted' in bad.err
