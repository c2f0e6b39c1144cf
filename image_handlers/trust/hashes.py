"""The hash an image's bytes must have, as Glance recorded it.

Glance records ``os_hash_algo``/``os_hash_value`` with whatever fixed-length
hashlib algorithm its ``hashing_algorithm`` names (sha512 by default; sha3_512,
blake2b, ...), and the legacy md5 ``checksum``. The os_hash is the one to check;
md5 only when no os_hash was recorded at all. An ``os_hash_algo`` this host cannot
compute is Untrusted, never a silent fall back to md5.
"""
from __future__ import annotations

from image_handlers import exceptions
from image_handlers.copy.checksum import Checksum
from image_handlers.image import ImageInfo


def recorded_checksum(image: ImageInfo) -> Checksum | None:
    """The checksum to verify ``image`` against, or None when Glance recorded none.
    Untrusted when a recorded one cannot be checked on this host."""
    algo = _text(image, 'os_hash_algo')
    value = _text(image, 'os_hash_value')
    if algo or value:
        if not (algo and value):
            raise exceptions.Untrusted(
                f'image {image.id} has os_hash_algo {image.os_hash_algo!r} and '
                f'os_hash_value {image.os_hash_value!r}: Glance records both or '
                f'neither; fix the image record (or re-upload the image)')
        try:
            return Checksum(algo, value)
        except exceptions.BadInput as exc:
            raise exceptions.Untrusted(
                f'image {image.id}: its recorded hash cannot be checked on this '
                f'host ({exc}); it is not checked against its md5 checksum '
                f'instead, which would prove much less: install a Python whose '
                f'hashlib has {algo}, or re-hash the image in Glance') from None
    if _text(image, 'checksum'):
        try:
            return Checksum('md5', image.checksum)
        except exceptions.BadInput as exc:
            raise exceptions.Untrusted(f'image {image.id}: {exc}') from None
    return None


def _text(image: ImageInfo, field: str) -> str:
    """A hash field of the record, stripped ('' when absent); Untrusted when it is
    not text (a record that is not what Glance writes)."""
    value = getattr(image, field)
    if value is None:
        return ''
    if not isinstance(value, str):
        raise exceptions.Untrusted(
            f'image {image.id}: {field} is a {type(value).__name__}, not a string: '
            f'fix the image record')
    return value.strip()
