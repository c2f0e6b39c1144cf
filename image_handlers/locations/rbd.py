"""rbd://FSID/POOL/IMAGE/SNAPSHOT locations (Glance's rbd store).

Strict: exactly four URL-quoted, non-empty parts, as glance_store writes them.
"""
from __future__ import annotations

import dataclasses

from image_handlers.locations.base import Location, unquote_strict

_PREFIX = 'rbd://'


@dataclasses.dataclass(frozen=True)
class RbdLocation(Location):
    scheme = 'rbd'
    fsid: str = ''
    pool: str = ''
    image: str = ''
    snapshot: str = ''

    @classmethod
    def from_url(cls, url, metadata=None, index=0):
        loc = cls(url=url, metadata=metadata or {}, index=index)
        if not url.startswith(_PREFIX):
            raise loc.invalid('must start with rbd://')
        rest = url[len(_PREFIX):]
        if '?' in rest or '#' in rest:
            raise loc.invalid('query or fragment not allowed')
        parts = rest.split('/')
        if len(parts) != 4:
            raise loc.invalid(
                f'expected rbd://FSID/POOL/IMAGE/SNAPSHOT (4 parts), got {len(parts)}')
        fsid, pool, image, snap = (
            unquote_strict(p, what, loc)
            for p, what in zip(parts, ('fsid', 'pool', 'image', 'snapshot')))
        return cls(url=url, metadata=metadata or {}, index=index,
                   fsid=fsid, pool=pool, image=image, snapshot=snap)

    @property
    def endpoint_key(self) -> str:
        return f'rbd://{self.fsid}/{self.pool}'
