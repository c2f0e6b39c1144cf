"""What every path must prove: hashes of any fixed-length algorithm, the one
"no recorded hash" rule, and signatures checked with cursive's verifiers."""
from __future__ import annotations

import hashlib
import random

import pytest

from image_handlers import exceptions
from image_handlers.image import ImageInfo
from image_handlers.trust import expectation, hashes
from image_handlers.trust.digest import DigestPass
from image_handlers.trust.expectation import Expectation, expect
from image_handlers.trust.policy import TrustPolicy
from image_handlers.trust.signature import SignatureClaim
from tests.trust.conftest import certificate_for, properties, sign

DATA = random.Random(3).randbytes(3 << 20)


def image(**fields) -> ImageInfo:
    return ImageInfo(id='img-1', status='active', **fields)


class Certificates:
    """A certificate in hand (what the key manager returned): not Barbican."""

    def __init__(self, certificate):
        self.certificate = certificate
        self.asked: list[str] = []

    def get(self, uuid, what='signing certificate'):
        self.asked.append(uuid)
        return self.certificate

    def check_trusted(self, uuid, certificate, trusted):
        raise AssertionError('not asked for in these tests')


@pytest.mark.parametrize('algo', ['sha512', 'sha3_512', 'blake2b', 'sha256', 'sha3_256'])
def test_any_fixed_length_algorithm_glance_can_record_is_checked_with_it(algo):
    value = hashlib.new(algo, DATA).hexdigest()
    checksum = hashes.recorded_checksum(image(os_hash_algo=algo, os_hash_value=value,
                                              checksum=hashlib.md5(DATA).hexdigest()))
    assert (checksum.algo, checksum.hexdigest) == (algo, value)
    passed = DigestPass(Expectation('img-1', checksum))
    passed.feed(memoryview(DATA))
    assert passed.finish('the file') == f'{algo} verified'


@pytest.mark.parametrize('algo', ['whirlpool-9000', 'shake_128'])
def test_an_algorithm_this_host_cannot_compute_is_untrusted_not_md5(algo):
    record = image(os_hash_algo=algo, os_hash_value='ab' * 32,
                   checksum=hashlib.md5(DATA).hexdigest())
    with pytest.raises(exceptions.Untrusted) as err:
        hashes.recorded_checksum(record)
    assert algo in str(err.value) and 'md5' in str(err.value)
    with pytest.raises(exceptions.Untrusted):
        expect(record, TrustPolicy(allow_unverified=True))


def test_half_an_os_hash_is_untrusted():
    with pytest.raises(exceptions.Untrusted, match='both or neither'):
        hashes.recorded_checksum(image(os_hash_algo='sha512'))


def test_md5_only_when_no_os_hash_was_recorded():
    md5 = hashlib.md5(DATA).hexdigest()
    assert str(hashes.recorded_checksum(image(checksum=md5))) == f'md5:{md5}'


def test_the_one_no_hash_rule():
    strict = expect(image(), TrustPolicy())
    assert strict.checksum is None and strict.unverifiable == expectation.NO_HASH
    with pytest.raises(exceptions.Refused, match='allow_unverified_copies'):
        strict.require_checksum()
    lenient = expect(image(), TrustPolicy(allow_unverified=True))
    assert lenient.unverifiable is None and lenient.require_checksum() is None


def test_partial_or_malformed_signature_properties_are_untrusted(rsa_key):
    good = properties(sign(rsa_key, DATA))
    del good['img_signature_key_type']
    with pytest.raises(exceptions.Untrusted, match='img_signature_key_type'):
        SignatureClaim.from_properties('img-1', good)
    for change, needle in (({'img_signature_hash_method': 'MD5'}, 'hash method'),
                           ({'img_signature_key_type': 'RSA-9'}, 'key type'),
                           ({'img_signature': '***not base64***'}, 'base64')):
        props = dict(properties(sign(rsa_key, DATA)), **change)
        with pytest.raises(exceptions.Untrusted) as err:
            SignatureClaim.from_properties('img-1', props)
        assert needle in str(err.value).lower() or needle in str(err.value)
    assert SignatureClaim.from_properties('img-1', {'os_distro': 'x'}) is None


def test_signatures_required_refuse_an_unsigned_image():
    with pytest.raises(exceptions.Untrusted, match='not signed'):
        expect(image(os_hash_algo='sha512', os_hash_value='a' * 128),
               TrustPolicy(verify_signatures=True), Certificates(None))


def test_certificate_validation_without_trusted_certificates_is_untrusted(rsa_key):
    record = image(properties=properties(sign(rsa_key, DATA)))
    with pytest.raises(exceptions.Untrusted, match='enable_certificate_validation'):
        expect(record, TrustPolicy(verify_signatures=True,
                                   require_certificate_validation=True),
               Certificates(certificate_for(rsa_key)))


def test_signatures_not_asked_for_are_not_checked_and_no_certificate_is_read(rsa_key):
    certificates = Certificates(certificate_for(rsa_key))
    record = image(properties=properties('bm90IGEgc2lnbmF0dXJl'),
                   os_hash_algo='sha512', os_hash_value=hashlib.sha512(DATA).hexdigest())
    found = expect(record, TrustPolicy(), certificates)
    assert found.signature is None and certificates.asked == []


@pytest.mark.parametrize('key_name,key_type,hash_method', [
    ('rsa_key', 'RSA-PSS', 'SHA-256'), ('rsa_key', 'RSA-PSS', 'SHA-512'),
    ('ec_key', 'ECC_SECP384R1', 'SHA-384')])
def test_signed_bytes_verify_and_a_flipped_byte_does_not(request, key_name, key_type,
                                                         hash_method):
    key = request.getfixturevalue(key_name)
    record = image(os_hash_algo='sha512', os_hash_value=hashlib.sha512(DATA).hexdigest(),
                   properties=properties(sign(key, DATA, hash_method), 'cert-9',
                                         hash_method, key_type))
    certificates = Certificates(certificate_for(key))
    found = expect(record, TrustPolicy(verify_signatures=True), certificates)
    assert certificates.asked == ['cert-9'] and found.signature is not None
    assert 'cert-9' in found.key and found.key.startswith('sha512:')
    good = DigestPass(found)
    for start in range(0, len(DATA), 1 << 20):
        good.feed(memoryview(DATA)[start:start + (1 << 20)])
    assert 'signature' in good.finish('the LUN')

    flipped = bytearray(DATA)
    flipped[12345] ^= 1
    # Hash only from another image record: the signature alone must catch it.
    unhashed = Expectation('img-1', None, found.signature)
    bad = DigestPass(unhashed)
    bad.feed(memoryview(flipped))
    with pytest.raises(exceptions.SignatureMismatch) as err:
        bad.finish('the LUN')
    assert 'img-1' in str(err.value) and 'img_signature' in str(err.value)


def test_a_certificate_with_another_kind_of_key_is_untrusted(rsa_key, ec_key):
    record = image(properties=properties(sign(rsa_key, DATA), key_type='RSA-PSS'))
    with pytest.raises(exceptions.Untrusted, match='RSA-PSS'):
        expect(record, TrustPolicy(verify_signatures=True),
               Certificates(certificate_for(ec_key)))


def test_the_signature_alone_proves_an_image_without_a_hash(rsa_key):
    record = image(properties=properties(sign(rsa_key, DATA)))
    found = expect(record, TrustPolicy(verify_signatures=True),
                   Certificates(certificate_for(rsa_key)))
    assert found.checksum is None and found.unverifiable is None
    assert found.require_checksum() is None
