"""Signing keys and certificates made here with cryptography, the way Glance's
signature guide makes them; the key manager (Barbican) is not involved in these
tests: they check what is done with a certificate once it is in hand."""
from __future__ import annotations

import base64
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

HASHES = {'SHA-224': hashes.SHA224, 'SHA-256': hashes.SHA256,
          'SHA-384': hashes.SHA384, 'SHA-512': hashes.SHA512}


def certificate_for(key, name: str = 'image signer'):
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))


def sign(key, data: bytes, hash_method: str = 'SHA-256') -> str:
    algorithm = HASHES[hash_method]()
    if isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(data, padding.PSS(mgf=padding.MGF1(algorithm),
                                         salt_length=padding.PSS.MAX_LENGTH), algorithm)
    else:
        raw = key.sign(data, ec.ECDSA(algorithm))
    return base64.b64encode(raw).decode()


@pytest.fixture(scope='session')
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope='session')
def ec_key():
    return ec.generate_private_key(ec.SECP384R1())


def properties(signature: str, cert_uuid: str = 'cert-1', hash_method: str = 'SHA-256',
               key_type: str = 'RSA-PSS') -> dict:
    return {'img_signature': signature, 'img_signature_hash_method': hash_method,
            'img_signature_key_type': key_type,
            'img_signature_certificate_uuid': cert_uuid}
