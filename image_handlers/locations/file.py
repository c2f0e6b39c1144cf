"""file:// locations: Glance's filesystem store, typically on a shared mount."""
from __future__ import annotations

import dataclasses
import os.path
import urllib.parse

from image_handlers.locations.base import Location


@dataclasses.dataclass(frozen=True)
class FileLocation(Location):
    scheme = 'file'
    path: str = ''

    @classmethod
    def from_url(cls, url, metadata=None, index=0):
        loc = cls(url=url, metadata=metadata or {}, index=index)
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError as exc:
            raise loc.invalid(str(exc))
        if parts.netloc not in ('', 'localhost'):
            host = parts.netloc.rpartition('@')[2]      # never print credentials
            raise loc.invalid(f'host {host!r}: only file:///path is allowed')
        if parts.query or parts.fragment:
            raise loc.invalid('query or fragment not allowed')
        path = urllib.parse.unquote(parts.path)
        if not path.startswith('/'):
            raise loc.invalid('path must be absolute')
        if '\x00' in path:
            raise loc.invalid('path contains NUL')
        if any(p == '..' for p in path.split('/')):
            raise loc.invalid('path contains ".."')
        return cls(url=url, metadata=metadata or {}, index=index,
                   path=os.path.normpath(path))

    @property
    def endpoint_key(self) -> str:
        mount = self.metadata.get('mountpoint') or os.path.dirname(self.path)
        return f'file://{mount}'
