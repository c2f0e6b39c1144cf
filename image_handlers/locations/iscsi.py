"""iscsi://HOST[:PORT]/IQN/LUN locations (qemu's libiscsi URL form)."""
from __future__ import annotations

import dataclasses
import re
import urllib.parse

from image_handlers.locations.base import Location

_IQN = re.compile(r'^(iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:.+)?|eui\.[0-9A-Fa-f]{16})$')


@dataclasses.dataclass(frozen=True)
class IscsiLocation(Location):
    scheme = 'iscsi'
    host: str = ''
    port: int = 3260
    iqn: str = ''
    lun: int = 0

    @classmethod
    def from_url(cls, url, metadata=None, index=0):
        loc = cls(url=url, metadata=metadata or {}, index=index)
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or 3260
        except ValueError as exc:
            raise loc.invalid(str(exc))
        if not parts.hostname:
            raise loc.invalid('no portal host')
        if parts.query or parts.fragment:
            raise loc.invalid('query or fragment not allowed')
        segs = parts.path.strip('/').split('/')
        if len(segs) != 2:
            raise loc.invalid('expected iscsi://HOST[:PORT]/IQN/LUN')
        iqn = urllib.parse.unquote(segs[0])
        if not _IQN.match(iqn):
            raise loc.invalid(f'{iqn!r} is not an iqn. or eui. name')
        if not segs[1].isdigit():
            raise loc.invalid(f'LUN {segs[1]!r} is not a number')
        return cls(url=url, metadata=metadata or {}, index=index,
                   host=parts.hostname, port=port, iqn=iqn, lun=int(segs[1]))
