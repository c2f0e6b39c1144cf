"""An image's signature (``img_signature*`` properties), checked with cursive as
Nova checks it: cursive decodes the signature, knows the hash methods and key
types, and builds the verifier; the signing certificate comes from the key
manager (``certificates``).

A signature is over the image's bytes, hashed with ``img_signature_hash_method``;
cursive's verifiers hash as they are fed, so a copy feeds the verifier in a
pipeline stage of its own, beside the image hash (both release the GIL: the
copy runs at the speed of the slower of the two).
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

from cursive import exception as cursive_exception
from cursive import signature_utils

from image_handlers import exceptions

PROPERTIES = ('img_signature', 'img_signature_hash_method', 'img_signature_key_type',
              'img_signature_certificate_uuid')


class Verifier(Protocol):
    """A cursive verifier: fed the bytes, then ``verify()`` raises if they do not
    carry the signature."""

    def update(self, data: bytes | memoryview) -> None: ...

    def verify(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class SignatureClaim:
    """The four properties, checked for form (not yet against a certificate)."""

    signature: str          # base64, as Glance stores it
    hash_method: str        # SHA-224/256/384/512
    key_type: str           # RSA-PSS, DSA, ECC_*
    certificate_uuid: str

    @classmethod
    def from_properties(cls, image_id: str,
                        properties: Mapping[str, Any]) -> 'SignatureClaim | None':
        """None when the image carries none of the properties; Untrusted when it
        carries some, or one is malformed (with what to fix)."""
        values = {name: properties.get(name) for name in PROPERTIES}
        present = [n for n, v in values.items() if v not in (None, '')]
        if not present:
            return None
        missing = [n for n in PROPERTIES if n not in present]
        if missing:
            raise exceptions.Untrusted(
                f'image {image_id} is signed but lacks {", ".join(missing)}: set all '
                f'four of {", ".join(PROPERTIES)} (see Glance\'s "image signature '
                f'verification" guide)')
        claim = cls(*(str(values[n]) for n in PROPERTIES))
        if not claim.signature.isascii():   # cursive's base64 raises ValueError
            raise exceptions.Untrusted(
                f'image {image_id}: img_signature is not base64 (it has characters '
                f'that are not ASCII)')
        try:
            signature_utils.get_signature(claim.signature)
            signature_utils.get_hash_method(claim.hash_method)
            signature_utils.SignatureKeyType.lookup(claim.key_type)
        except cursive_exception.SignatureVerificationError as exc:
            raise exceptions.Untrusted(
                f'image {image_id}: {exc} (img_signature_hash_method is one of '
                f'{", ".join(sorted(signature_utils.HASH_METHODS))}; '
                f'img_signature_key_type one of RSA-PSS, DSA, ECC_SECP384R1, '
                f'ECC_SECP521R1, ...)') from None
        return claim

    def bind(self, image_id: str, certificate) -> 'BoundSignature':
        """This claim with its certificate's public key: ready to verify bytes.
        Untrusted when the key is not of the claimed type."""
        key_type = signature_utils.SignatureKeyType.lookup(self.key_type)
        public_key = certificate.public_key()
        if not isinstance(public_key, key_type.public_key_type):
            raise exceptions.Untrusted(
                f'image {image_id}: certificate {self.certificate_uuid} holds a '
                f'{type(public_key).__name__.lstrip("_")}, not a key of type '
                f'{self.key_type} (img_signature_key_type)')
        from cryptography.hazmat.primitives import hashes, serialization
        fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
        der = public_key.public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
        return BoundSignature(self, image_id, public_key, fingerprint,
                              hashlib.sha256(der).hexdigest())


@dataclasses.dataclass(frozen=True)
class BoundSignature:
    claim: SignatureClaim
    image_id: str
    public_key: Any
    certificate_fingerprint: str        # sha256 of the certificate
    key_fingerprint: str                # sha256 of the public key (DER)

    def verifier(self) -> Verifier:
        """A fresh cursive verifier for one pass over the bytes."""
        key_type = signature_utils.SignatureKeyType.lookup(self.claim.key_type)
        return key_type.create_verifier(
            signature_utils.get_signature(self.claim.signature),
            signature_utils.get_hash_method(self.claim.hash_method), self.public_key)

    @property
    def key(self) -> str:
        """What a verdict about this signature is keyed by: the signature itself,
        how it was made and the certificate (a re-issued certificate misses)."""
        digest = hashlib.sha256(self.claim.signature.encode()).hexdigest()
        return (f'sig:{self.claim.hash_method}:{self.claim.key_type}:'
                f'{self.claim.certificate_uuid}:{self.certificate_fingerprint}:{digest}')

    def describe(self) -> str:
        return (f'{self.claim.key_type}/{self.claim.hash_method} signature '
                f'(certificate {self.claim.certificate_uuid})')


def check(verifier: Verifier, what: str, consequence: str = '') -> None:
    """``verifier.verify()``; SignatureMismatch saying ``what`` failed (e.g.
    'image X: file Y') and ``consequence`` (what was done about it)."""
    from cryptography.exceptions import InvalidSignature
    try:
        verifier.verify()
    except (InvalidSignature, cursive_exception.SignatureVerificationError) as exc:
        detail = f' ({exc})' if str(exc) else ''
        raise exceptions.SignatureMismatch(
            f'{what} does not carry the image\'s signature (img_signature){detail}: '
            f'not the data that was signed' + (f'; {consequence}' if consequence
                                               else '')) from None
