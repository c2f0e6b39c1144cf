"""cinder:// locations (glance_store's cinder store): recognised, and not served.

Many clouds keep images as Cinder volumes and publish them as image LUNs this way.
Serving one means asking Cinder for an attachment (its connection info names the
portal, target, LUN and CHAP credentials) and attaching it with os-brick; no handler
here does that yet, so the location is kept with the reason instead of being called
unknown. The lab cannot run Cinder's LVM driver (no device mapper in its kernel).
"""
from __future__ import annotations

import dataclasses
import re
import urllib.parse

from image_handlers.locations.base import Location

_UUID = re.compile(r'^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$')


@dataclasses.dataclass(frozen=True)
class CinderLocation(Location):
    scheme = 'cinder'
    volume_id: str = ''

    @classmethod
    def from_url(cls, url, metadata=None, index=0):
        loc = cls(url=url, metadata=metadata or {}, index=index)
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError as exc:
            raise loc.invalid(str(exc))
        # cinder://VOLUME_ID, or cinder://STORE/VOLUME_ID with multiple stores.
        volume = parts.path.strip('/') or parts.netloc
        if not _UUID.match(volume or ''):
            raise loc.invalid('expected cinder://[STORE/]VOLUME_UUID')
        return cls(url=url, metadata=metadata or {}, index=index, volume_id=volume)

    @property
    def usable(self) -> bool:
        return False

    @property
    def problem(self) -> str:
        return (f'cinder:// locations (volume {self.volume_id}, glance_store\'s cinder '
                f'store) are not served: that needs a Cinder attachment and os-brick, '
                f'which no handler here does yet (see README, "iSCSI")')
