"""The lab's real Keystone and Barbican, and a Glance behind keystonemiddleware.

What the handlers will meet in a real cloud: password tokens validated by Keystone,
project isolation enforced by Glance's policies on real tokens, the service-role
locations API, signing certificates in Barbican fetched through castellan as the
image owner (cursive, as Nova verifies signatures), and nova.conf resolving endpoints
from the catalog.
"""
from __future__ import annotations

import configparser
import io
import json
import urllib.error
import urllib.request
import uuid

import pytest

from tools.lab import nova_conf_keystone, signing

DATA = b''.join(bytes([i]) * 4096 for i in range(256))  # 1 MiB, every byte value


def _get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, headers=headers)
    try:
        with opener.open(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- Keystone -----------------------------------------------------------------------------
def test_password_token_issued_and_validated(keystone_lab):
    token = keystone_lab.token('alice', 'alpha')
    nova = keystone_lab.session('nova', 'service')  # a service validating a user token
    resp = nova.get(keystone_lab.auth_url + '/auth/tokens',
                    headers={'X-Subject-Token': token})
    assert resp.status_code == 200
    body = resp.json()['token']
    assert body['user']['name'] == 'alice'
    assert body['project']['name'] == 'alpha'
    assert body['project']['id'] == keystone_lab.project_id('alpha')
    assert {'member', 'reader'} <= {r['name'] for r in body['roles']}
    assert 'admin' not in {r['name'] for r in body['roles']}
    # the service users hold service AND admin in project service
    roles = keystone_lab.password_token('glance', 'service')[1]['roles']
    assert {'service', 'admin'} <= {r['name'] for r in roles}


def test_wrong_password_refused(keystone_lab):
    from keystoneauth1 import exceptions
    with pytest.raises(exceptions.Unauthorized):
        keystone_lab.token('alice', 'alpha', password='not-the-password')
    with pytest.raises(exceptions.Unauthorized):  # alice is no member of beta
        keystone_lab.token('alice', 'beta')


def test_register_endpoint_idempotent_and_replaces_stale_url(keystone_lab):
    stype = f'lab-test-{uuid.uuid4().hex[:6]}'
    sid = keystone_lab.register_endpoint(stype, 'labtest', 'http://127.0.0.1:1/old')
    assert keystone_lab.register_endpoint(stype, 'labtest', 'http://127.0.0.1:1/new') == sid
    assert keystone_lab.register_endpoint(stype, 'labtest', 'http://127.0.0.1:1/new') == sid
    sess = keystone_lab.session('alice', 'alpha')
    for interface in ('public', 'internal'):
        assert sess.get_endpoint(service_type=stype, interface=interface,
                                 region_name='RegionOne') == 'http://127.0.0.1:1/new'
    eps = keystone_lab._admin('GET', f'/v3/endpoints?service_id={sid}')['endpoints']
    assert sorted(e['interface'] for e in eps) == ['internal', 'public']
    keystone_lab._admin('DELETE', f'/v3/services/{sid}')


def test_catalog_has_image_and_key_manager(keystone_lab, barbican_lab, glance_ks_lab):
    sess = keystone_lab.session('alice', 'alpha')
    assert sess.get_endpoint(service_type='image', interface='public') \
        .rstrip('/') == glance_ks_lab.endpoint
    assert sess.get_endpoint(service_type='key-manager', interface='internal') \
        .rstrip('/') == barbican_lab.endpoint


# -- Glance behind auth_token -------------------------------------------------------------
@pytest.fixture
def image_of(glance_ks_lab):
    """Create a private image as a keystone user (data uploaded); deleted after."""
    made = []

    def make(user: str, project: str, data: bytes = b'lab' * 1000) -> str:
        client = glance_ks_lab.keystone_client(user, project)
        img = client.images.create(name=f'test-{uuid.uuid4().hex[:8]}', disk_format='raw',
                                   container_format='bare', visibility='private')
        made.append((client, img['id']))
        client.images.upload(img['id'], io.BytesIO(data), image_size=len(data))
        return img['id']

    yield make
    for client, image_id in made:
        client.images.delete(image_id)


def test_alice_cannot_see_bobs_private_image(glance_ks_lab, image_of):
    from glanceclient import exc
    image_id = image_of('bob', 'beta')
    bob = glance_ks_lab.keystone_client('bob', 'beta')
    alice = glance_ks_lab.keystone_client('alice', 'alpha')
    assert bob.images.get(image_id)['status'] == 'active'
    with pytest.raises(exc.HTTPNotFound):
        alice.images.get(image_id)
    assert image_id not in {i['id'] for i in alice.images.list()}
    with pytest.raises(exc.HTTPNotFound):
        b''.join(alice.images.data(image_id))


def test_unknown_token_gets_401(glance_ks_lab, keystone_lab):
    url = glance_ks_lab.endpoint + '/v2/images'
    assert _get(url, {'X-Auth-Token': 'gAAAAABnot-a-fernet-token'})[0] == 401
    assert _get(url, {})[0] == 401
    # lab stand-in tokens mean nothing here
    assert _get(url, {'X-Auth-Token': 'lab-admin'})[0] == 401
    assert _get(url, {'X-Auth-Token': keystone_lab.token('alice', 'alpha')})[0] == 200


def test_locations_api_needs_a_service_role_token(glance_ks_lab, keystone_lab, image_of):
    """GET /v2/images/{id}/locations (policy fetch_image_location = rule:service_api =
    'role:service or role:admin'). Measured on Glance 33: the rule checks the roles of
    X-Auth-Token only; a user token plus the nova service user's X-Service-Token
    (keystonemiddleware sets X-Service-Roles: service,admin) is still refused. Whatever
    asks for locations must do so with a service user's own token."""
    image_id = image_of('alice', 'alpha')
    url = f'{glance_ks_lab.endpoint}/v2/images/{image_id}/locations'
    alice, nova = keystone_lab.token('alice', 'alpha'), keystone_lab.token('nova', 'service')
    assert _get(url, {'X-Auth-Token': alice})[0] == 403
    status, body = _get(url, {'X-Auth-Token': alice, 'X-Service-Token': nova})
    assert status == 403, body
    status, body = _get(url, {'X-Auth-Token': nova})
    assert status == 200, body
    locations = json.loads(body)
    assert [loc['url'] for loc in locations] == \
        [f'file://{glance_ks_lab.images_dir}/{image_id}']
    assert locations[0]['metadata'] == {'store': 'fs'}
    # glanceclient, as the nova service user through the catalog
    client = glance_ks_lab.keystone_client('nova', 'service')
    assert client.images.get_image_locations(image_id) == locations


def test_nova_conf_resolves_glance_from_the_catalog(tmp_path, keystone_lab, glance_ks_lab,
                                                    barbican_lab):
    text = nova_conf_keystone(keystone_lab)
    assert text == glance_ks_lab.nova_conf() == glance_ks_lab.nova_conf_keystone()
    parsed = configparser.ConfigParser()
    parsed.read_string(text)
    assert 'endpoint_override' not in parsed['glance']
    assert parsed['glance']['username'] == 'nova'
    assert parsed['service_user']['send_service_user_token'] == 'true'
    assert parsed['key_manager']['backend'] == 'barbican'
    assert parsed['barbican']['auth_endpoint'] == keystone_lab.auth_url
    path = tmp_path / 'nova.conf'
    path.write_text(text)

    from keystoneauth1 import loading
    from oslo_config import cfg
    conf = cfg.ConfigOpts()
    for group in ('glance', 'service_user'):
        loading.register_auth_conf_options(conf, group)
        loading.register_session_conf_options(conf, group)
    loading.register_adapter_conf_options(conf, 'glance')
    conf(['--config-file', str(path)], project='lab', default_config_files=[],
         default_config_dirs=[])
    auth = loading.load_auth_from_conf_options(conf, 'glance')
    sess = loading.load_session_from_conf_options(conf, 'glance', auth=auth)
    adapter = loading.load_adapter_from_conf_options(conf, 'glance', session=sess,
                                                     auth=auth, service_type='image')
    assert adapter.get_endpoint().rstrip('/') == glance_ks_lab.endpoint
    svc_auth = loading.load_auth_from_conf_options(conf, 'service_user')
    assert sess.get_token(auth=svc_auth)


# -- Barbican, castellan, cursive ---------------------------------------------------------
@pytest.fixture(scope='module')
def castellan_global(keystone_lab, barbican_lab):
    """castellan's options on the global cfg.CONF, which cursive's get_certificate uses
    (``castellan.key_manager.API()`` without a conf): ``[key_manager] backend =
    barbican``, ``[barbican] auth_endpoint`` = the lab Keystone, endpoint type public
    (Barbican from the catalog). Overrides are cleared after the module."""
    from oslo_config import cfg
    undo = signing.configure_castellan(cfg.CONF, keystone_lab)
    yield cfg.CONF
    undo()


@pytest.fixture(scope='module')
def signer(keystone_lab, barbican_lab):
    """A CA and an RSA signing certificate issued by it, both stored in Barbican by
    alice through castellan (a private ConfigOpts)."""
    conf = signing.private_conf(keystone_lab)
    ctx = signing.request_context(keystone_lab, 'alice', 'alpha')
    ca_cert, ca_key = signing.make_ca()
    cert, key = signing.make_signing_cert(ca_cert, ca_key)
    return {'cert': cert, 'key': key, 'ca': ca_cert, 'ca_key': ca_key, 'conf': conf,
            'uuid': signing.store_certificate(cert, ctx, conf, name='lab signer'),
            'ca_uuid': signing.store_certificate(ca_cert, ctx, conf, name='lab CA')}


def test_certificate_stored_by_alice_comes_back_through_cursive(keystone_lab, signer,
                                                                castellan_global):
    from cryptography.hazmat.primitives import serialization
    from cursive import exception, signature_utils
    alice = signing.request_context(keystone_lab, 'alice', 'alpha')
    got = signature_utils.get_certificate(alice, signer['uuid'])
    der = serialization.Encoding.DER
    assert got.public_bytes(der) == signer['cert'].public_bytes(der)
    bob = signing.request_context(keystone_lab, 'bob', 'beta')
    with pytest.raises(exception.SignatureVerificationError, match='Unable to retrieve'):
        signature_utils.get_certificate(bob, signer['uuid'])
    with pytest.raises(exception.SignatureVerificationError, match='not found'):
        signature_utils.get_certificate(alice, str(uuid.uuid4()))


def test_signing_certificate_chains_to_the_trusted_ca(keystone_lab, signer,
                                                      castellan_global):
    from cursive import certificate_utils, exception
    alice = signing.request_context(keystone_lab, 'alice', 'alpha')
    certificate_utils.verify_certificate(alice, signer['uuid'], [signer['ca_uuid']])
    other_ca, _ = signing.make_ca('some other CA')
    other_uuid = signing.store_certificate(other_ca, alice, signer['conf'])
    with pytest.raises(exception.SignatureVerificationError):
        certificate_utils.verify_certificate(alice, signer['uuid'], [other_uuid])


def _verify(context, props: dict[str, str], data: bytes) -> None:
    from cursive import signature_utils
    verifier = signature_utils.get_verifier(
        context, props['img_signature_certificate_uuid'],
        props['img_signature_hash_method'], props['img_signature'],
        props['img_signature_key_type'])
    for off in range(0, len(data), 65536):  # streamed, as Nova feeds image chunks
        verifier.update(data[off:off + 65536])
    verifier.verify()


def test_signature_verifies_with_cursive_and_a_flipped_byte_fails(
        tmp_path, keystone_lab, signer, castellan_global):
    from cryptography.exceptions import InvalidSignature
    path = tmp_path / 'image.raw'
    path.write_bytes(DATA)
    props = signing.sign(path, signer['key'], certificate_uuid=signer['uuid'])
    assert set(props) == {'img_signature', 'img_signature_hash_method',
                          'img_signature_key_type', 'img_signature_certificate_uuid'}
    assert (props['img_signature_hash_method'], props['img_signature_key_type']) == \
        ('SHA-256', 'RSA-PSS')
    alice = signing.request_context(keystone_lab, 'alice', 'alpha')
    _verify(alice, props, DATA)
    flipped = bytearray(DATA)
    flipped[len(DATA) // 2] ^= 0x01
    with pytest.raises(InvalidSignature):
        _verify(alice, props, bytes(flipped))
    with pytest.raises(InvalidSignature):  # same bytes, one byte short
        _verify(alice, props, DATA[:-1])
    # the same signature from bytes and from a file object
    assert signing.sign(DATA, signer['key'], certificate_uuid=signer['uuid'])[
        'img_signature'] != ''
    with open(path, 'rb') as f:
        _verify(alice, signing.sign(f, signer['key'], 'SHA-512',
                                    certificate_uuid=signer['uuid']), DATA)


def test_ecc_signature_verifies_with_cursive(keystone_lab, signer, castellan_global):
    from cryptography.exceptions import InvalidSignature
    alice = signing.request_context(keystone_lab, 'alice', 'alpha')
    cert, key = signing.make_signing_cert(signer['ca'], signer['ca_key'], 'ecc signer',
                                          key_type='ECC_SECP384R1')
    cert_uuid = signing.store_certificate(cert, alice, signer['conf'])
    props = signing.sign(DATA, key, 'SHA-384', 'ECC_SECP384R1', certificate_uuid=cert_uuid)
    _verify(alice, props, DATA)
    with pytest.raises(InvalidSignature):
        _verify(alice, props, DATA[:-1] + b'\x00')
    with pytest.raises(ValueError):  # an RSA key type for an EC key
        signing.sign(DATA, key, key_type='RSA-PSS', certificate_uuid=cert_uuid)
