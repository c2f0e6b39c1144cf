"""What we know of one Glance image: the record, its hashes and its locations."""
from __future__ import annotations

import dataclasses
from typing import Any

from image_handlers.locations import Location

HASH_ALGOS = ('sha512', 'sha384', 'sha256', 'sha224', 'sha1', 'md5')


@dataclasses.dataclass(frozen=True)
class ExpectedHash:
    """The hash a copy must match: os_hash first, the md5 ``checksum`` as fallback."""

    algo: str
    hexdigest: str

    def __str__(self) -> str:
        return f'{self.algo}:{self.hexdigest}'


@dataclasses.dataclass
class ImageInfo:
    id: str
    status: str
    disk_format: str | None = None
    container_format: str | None = None
    size: int | None = None
    virtual_size: int | None = None
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    owner: str | None = None
    name: str | None = None
    locations: list[Location] = dataclasses.field(default_factory=list)
    # Where the location list came from, and what was not available (for explain).
    location_sources: list[str] = dataclasses.field(default_factory=list)
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def expected_hash(self) -> ExpectedHash | None:
        algo = (self.os_hash_algo or '').lower()
        if algo in HASH_ALGOS and self.os_hash_value:
            return ExpectedHash(algo, self.os_hash_value.lower())
        if self.checksum:
            return ExpectedHash('md5', self.checksum.lower())
        return None

    @property
    def has_data(self) -> bool:
        return self.status == 'active'
