"""The one Expectation every path must meet for one request.

Decided once per request, before any handler looks at a location, from the image
record and the host's TrustPolicy. What no path could prove (an unknown hash
algorithm, a signature required but absent or malformed, a certificate missing
or untrusted) is Untrusted: no handler may provide the image, and the Nova hooks
do not hand it to Nova's own path either. What depends on the bytes (do they
hash right, do they carry the signature) is each path's to prove, in its own way:
a copy while it copies, a zero-copy source once per identity (``verdicts``).
"""
from __future__ import annotations

import dataclasses

from image_handlers import exceptions
from image_handlers.copy.checksum import Checksum
from image_handlers.image import ImageInfo
from image_handlers.trust.certificates import CertificateSource
from image_handlers.trust.hashes import recorded_checksum
from image_handlers.trust.policy import TrustPolicy
from image_handlers.trust.signature import BoundSignature, SignatureClaim

NO_HASH = ('image has neither os_hash_value nor checksum, so nothing proves its '
           'bytes; set [image_handlers] allow_unverified_copies = true to accept '
           'it unverified')


@dataclasses.dataclass(frozen=True)
class Expectation:
    image_id: str
    checksum: Checksum | None
    signature: BoundSignature | None = None
    # Why a path that vouches for bytes by their hash must refuse (no recorded
    # hash, unverified copies not allowed); None when it may go on.
    unverifiable: str | None = None

    def require_checksum(self) -> Checksum | None:
        """The checksum to verify; Refused (the one "no recorded hash" rule) when
        there is none and unverified disks are not allowed."""
        if self.unverifiable:
            raise exceptions.Refused(self.unverifiable)
        return self.checksum

    @property
    def key(self) -> str:
        """What a verdict proves, as one string: a verdict for another hash or
        another signature is not this one's."""
        parts = [str(self.checksum) if self.checksum else 'no-hash']
        if self.signature is not None:
            parts.append(self.signature.key)
        return '|'.join(parts)

    def describe(self) -> str:
        what = [f'{self.checksum.algo}' if self.checksum else 'NO hash']
        if self.signature is not None:
            what.append(self.signature.describe())
        return ' and '.join(what)


def expect(image: ImageInfo, policy: TrustPolicy,
           certificates: CertificateSource | None = None) -> Expectation:
    """The Expectation for ``image``; Untrusted when no path could meet it."""
    checksum = recorded_checksum(image)
    unverifiable = None if checksum or policy.allow_unverified else NO_HASH
    claim = SignatureClaim.from_properties(image.id, image.properties)
    if not policy.verify_signatures:
        return Expectation(image.id, checksum, None, unverifiable)
    if claim is None:
        raise exceptions.Untrusted(
            f'image {image.id} is not signed (no img_signature properties), and this '
            f'host verifies signatures ([glance] verify_glance_signatures, or the '
            f'instance\'s trusted certificates): sign the image, or boot another')
    if policy.require_certificate_validation:
        raise exceptions.Untrusted(
            f'image {image.id}: [glance] enable_certificate_validation is on but no '
            f'trusted certificate ids were given (the instance\'s '
            f'trusted_image_certificates, or [glance] default_trusted_certificate_ids), '
            f'so its signing certificate cannot be validated')
    if certificates is None:
        raise exceptions.Untrusted(
            f'image {image.id}: signatures are verified, and no key manager was '
            f'given to read the signing certificate from')
    certificate = certificates.get(claim.certificate_uuid)
    if policy.trusted_certs:
        certificates.check_trusted(claim.certificate_uuid, certificate,
                                   policy.trusted_certs)
    # The signature proves the bytes even where Glance recorded no hash.
    return Expectation(image.id, checksum, claim.bind(image.id, certificate), None)
