"""A signed image is verified in the same pass as its hash: the signature's digest
is a pipeline stage of its own, fed the bytes written, kept bytes of a resume
included; a copy that does not carry the signature is discarded."""
from __future__ import annotations

import os

import pytest

from image_handlers import exceptions
from image_handlers.copy import CopyOptions, copy
from image_handlers.trust.signature import SignatureClaim
from tests.copy.helpers import checkpoint_offset, sha512
from tests.trust.conftest import certificate_for, properties, sign


@pytest.fixture(scope='module')
def signer():
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = certificate_for(key)

    def bound(data: bytes):
        claim = SignatureClaim.from_properties('img-s', properties(sign(key, data)))
        return claim.bind('img-s', certificate)
    return bound


def test_signed_copy_is_verified_in_the_same_pass(servers, options, image, tmp_path,
                                                  signer):
    server = servers(image)
    target = str(tmp_path / 'disk')
    result = copy(server.url, target, checksum=sha512(image), options=options,
                  signature=signer(image).verifier).wait(60)
    assert result.signature_verified and result.bytes_transferred == len(image)
    assert server.bytes_sent == len(image)          # one pass: nothing read twice
    with open(target, 'rb') as f:
        assert f.read() == image


def test_bytes_that_do_not_carry_the_signature_leave_nothing(servers, options, image,
                                                             tmp_path, signer):
    """The hash matches (the record and the data agree) but the signature was made
    over other bytes: only the signature can catch it."""
    other = bytearray(image)
    other[777] ^= 0xFF
    server = servers(image)
    target = str(tmp_path / 'disk')
    with pytest.raises(exceptions.SignatureMismatch) as err:
        copy(server.url, target, checksum=sha512(image), options=options,
             signature=signer(bytes(other)).verifier,
             description='image img-s from http').wait(60)
    assert 'img_signature' in str(err.value) and 'nothing was published' in str(err.value)
    assert os.listdir(tmp_path) == []


def test_a_resumed_copy_feeds_the_kept_bytes_to_the_verifier(servers, options, image,
                                                             tmp_path, signer):
    server = servers(image)
    server.faults.close_after = 900_000
    server.faults.fail_from_request = 1
    target = str(tmp_path / 'disk')
    opts = CopyOptions(**{**options.__dict__, 'retries': 0})
    with pytest.raises(exceptions.RetriesExhausted):
        copy(server.url, target, checksum=sha512(image), options=opts,
             signature=signer(image).verifier).wait(60)
    assert checkpoint_offset(target) == 900_000
    server.faults.fail_from_request = None
    result = copy(server.url, target, checksum=sha512(image), options=opts,
                  signature=signer(image).verifier).wait(60)
    assert result.resumed_from == 900_000 and result.signature_verified
    with open(target, 'rb') as f:
        assert f.read() == image
