"""The patched Nova 34 boots signed images from RBD by clone, in a cloud with a
real Keystone (tokens, catalog, service user) and a real Barbican: Nova's CONF is
what devstack writes ([glance] and [service_user] password auth, no
endpoint_override, [key_manager] barbican), the request context carries alice's
token and catalog as nova-compute gets them, and the signing certificate is
read from Barbican as alice, with Nova's own context. Nothing of Nova is mocked.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import uuid

import pytest
import rbd

from nova import exception as nova_exception

from tests.functional.conftest import image_bytes
from tools.lab import nova_env as lab_nova
from tools.lab import signing

MiB = 1 << 20
CONF = lab_nova.CONF


@pytest.fixture
def signatures_on(nova_env):
    nova_env(glance={'verify_glance_signatures': True})


@pytest.fixture(scope='module')
def alice_signer(keystone_lab, barbican_lab):
    """alice's CA and signing certificate, stored in Barbican as alice."""
    ca, ca_key = signing.make_ca('alice CA')
    cert, key = signing.make_signing_cert(ca, ca_key, 'alice signer')
    conf = signing.private_conf(keystone_lab)
    ctx = signing.request_context(keystone_lab, 'alice', 'alpha')
    return key, signing.store_certificate(cert, ctx, conf), \
        signing.store_certificate(ca, ctx, conf)


@pytest.fixture
def alice_image(glance_ks_lab, alice_signer):
    """A raw image of alice's in Glance's rbd store, signed (over ``signed``)."""
    client = glance_ks_lab.keystone_client('alice', 'alpha')
    key, cert_uuid, _ = alice_signer
    made = []

    def make(data: bytes, signed: bytes | None = None) -> str:
        img = client.images.create(name=f'nova-signed-{uuid.uuid4().hex[:6]}',
                                   disk_format='raw', container_format='bare')
        made.append(img['id'])
        client.images.upload(img['id'], io.BytesIO(data), image_size=len(data),
                             backend='ceph')
        client.images.update(img['id'], **signing.sign(
            data if signed is None else signed, key, certificate_uuid=cert_uuid))
        return img['id']
    yield make
    for image_id in made:
        with contextlib.suppress(Exception):
            client.images.delete(image_id)


@pytest.fixture
def vms(rbd_admin):
    """Names in pool vms now; removes the disks a test added."""
    def names() -> set[str]:
        with rbd_admin.open_ioctx('vms') as ioctx:
            return set(rbd.RBD().list(ioctx))
    before = names()
    yield names
    with rbd_admin.open_ioctx('vms') as ioctx:
        for name in names() - before:
            with contextlib.suppress(rbd.ImageNotFound):
                rbd.RBD().remove(ioctx, name)


def test_a_signed_image_boots_by_clone_verified_once_then_o1(
        signatures_on, alice, alice_image, rbd_admin, vms, caplog, tmp_path):
    data = image_bytes(8 * MiB, seed=61)
    image_id = alice_image(data)
    caplog.set_level(logging.INFO)
    first = lab_nova.make_instance(alice, image_id)
    backend = lab_nova.create_root_disk(alice, first, image_id)
    with contextlib.closing(rbd.Image(rbd_admin.open_ioctx('vms'), backend.rbd_name,
                                      read_only=True)) as disk:
        assert disk.get_parent_image_spec()['image_name'] == image_id
        assert disk.read(0, len(data)) == data
    assert f'image {image_id} provided by rbd_clone' in caplog.text
    assert caplog.text.count('read once') == 1          # the snapshot, verified
    assert 'RSA-PSS/SHA-256 signature' in caplog.text
    verdicts = tmp_path / 'state' / 'rbd-verdicts' / f'{image_id}.json'
    assert os.stat(verdicts).st_mode & 0o777 == 0o600

    caplog.clear()
    second = lab_nova.make_instance(alice, image_id)
    lab_nova.create_root_disk(alice, second, image_id)
    assert f'image {image_id} provided by rbd_clone' in caplog.text
    assert 'read once' not in caplog.text               # the verdict: O(1)
    assert {f'{first.uuid}_disk', f'{second.uuid}_disk'} <= vms()


def test_a_bad_signature_fails_the_boot_and_leaves_no_disk(
        signatures_on, alice, alice_image, vms, caplog):
    """The clone is refused (the snapshot does not carry the signature); the
    download Nova falls back to checks the signature itself (Nova's own cursive
    check, with Barbican) and fails too: no disk, no _base file."""
    data = image_bytes(4 * MiB, seed=62)
    image_id = alice_image(data, signed=data[::-1])
    before = vms()
    caplog.set_level(logging.INFO)
    with pytest.raises(Exception) as err:
        lab_nova.create_root_disk(alice, lab_nova.make_instance(alice, image_id),
                                  image_id)
    assert 'ignature' in f'{type(err.value).__name__} {err.value}'
    assert 'SignatureMismatch' in caplog.text           # rbd_clone's refusal
    assert vms() == before


def test_trusted_certificates_of_the_instance_are_checked(
        signatures_on, alice, alice_image, alice_signer, keystone_lab, barbican_lab,
        vms):
    from nova import objects
    data = image_bytes(2 * MiB, seed=63)
    image_id = alice_image(data)
    _, _, ca_uuid = alice_signer
    other_ca, _ = signing.make_ca('not alice\'s CA')
    other = signing.store_certificate(
        other_ca, signing.request_context(keystone_lab, 'alice', 'alpha'),
        signing.private_conf(keystone_lab))
    trusted = lab_nova.make_instance(alice, image_id,
                                     trusted_certs=objects.TrustedCerts(ids=[ca_uuid]))
    lab_nova.create_root_disk(alice, trusted, image_id)
    assert f'{trusted.uuid}_disk' in vms()
    untrusted = lab_nova.make_instance(alice, image_id,
                                       trusted_certs=objects.TrustedCerts(ids=[other]))
    with pytest.raises(nova_exception.ImageUnacceptable) as err:
        lab_nova.create_root_disk(alice, untrusted, image_id)
    assert 'is not trusted' in str(err.value)
    assert f'{untrusted.uuid}_disk' not in vms()
