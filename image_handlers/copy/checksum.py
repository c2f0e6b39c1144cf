"""The image hash a copy is verified against: ``algo:hexdigest``.

Glance records ``os_hash_algo``/``os_hash_value`` (sha512 by default) and the
legacy md5 ``checksum``; any fixed-length hashlib algorithm is accepted so a
deployment that changed ``hashing_algorithm`` keeps working.
"""
from __future__ import annotations

import dataclasses
import hashlib
import string

from image_handlers import exceptions

_HEX = frozenset(string.hexdigits)


@dataclasses.dataclass(frozen=True)
class Checksum:
    algo: str
    hexdigest: str

    def __post_init__(self) -> None:
        algo = (self.algo or '').strip().lower()
        hexdigest = (self.hexdigest or '').strip().lower()
        try:
            size = new_hash(algo).digest_size
        except (ValueError, TypeError):
            raise exceptions.BadInput(
                f'unknown checksum algorithm {self.algo!r}: use one of '
                f'{", ".join(sorted(_fixed_size_algorithms()))}') from None
        if not size:
            raise exceptions.BadInput(
                f'checksum algorithm {algo!r} has no fixed digest length: use one of '
                f'{", ".join(sorted(_fixed_size_algorithms()))}')
        if len(hexdigest) != 2 * size or not _HEX.issuperset(hexdigest):
            raise exceptions.BadInput(
                f'malformed {algo} checksum {self.hexdigest!r}: expected {2 * size} '
                f'hexadecimal digits, got {len(hexdigest)} characters')
        object.__setattr__(self, 'algo', algo)
        object.__setattr__(self, 'hexdigest', hexdigest)

    @classmethod
    def parse(cls, text: str) -> 'Checksum':
        """Parse ``algo:hexdigest`` (as printed by ``str()``)."""
        algo, sep, hexdigest = (text or '').partition(':')
        if not sep or not algo or not hexdigest:
            raise exceptions.BadInput(
                f'malformed checksum {text!r}: expected ALGORITHM:HEXDIGEST, '
                f'e.g. sha512:0a1b...')
        return cls(algo, hexdigest)

    def new(self) -> 'hashlib._Hash':
        """A fresh hash object of this algorithm."""
        return new_hash(self.algo)

    def __str__(self) -> str:
        return f'{self.algo}:{self.hexdigest}'


def new_hash(algo: str) -> 'hashlib._Hash':
    # usedforsecurity=False: md5 stays usable for integrity on FIPS hosts.
    return hashlib.new(algo, usedforsecurity=False)


def _fixed_size_algorithms() -> set[str]:
    return {a for a in hashlib.algorithms_guaranteed if not a.startswith('shake')}
