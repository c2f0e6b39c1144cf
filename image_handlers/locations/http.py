"""http:// and https:// locations (Glance's http store, or any web server)."""
from __future__ import annotations

import dataclasses
import urllib.parse

from image_handlers.locations.base import Location


@dataclasses.dataclass(frozen=True)
class HttpLocation(Location):
    scheme = 'http'
    host: str = ''
    port: int = 0

    @classmethod
    def from_url(cls, url, metadata=None, index=0):
        loc = cls(url=url, metadata=metadata or {}, index=index)
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise loc.invalid(str(exc))
        if parts.scheme not in ('http', 'https'):
            raise loc.invalid('scheme must be http or https')
        if not parts.hostname:
            raise loc.invalid('no host')
        hostinfo = parts.netloc.rpartition('@')[2]
        if ('[' in hostinfo) != (']' in hostinfo):  # urlsplit saw a "]" in userinfo
            raise loc.invalid(f'host {hostinfo!r}: unbalanced "[" or "]"')
        if not parts.path or parts.path == '/':
            raise loc.invalid('no path to an object')
        default_port = 443 if parts.scheme == 'https' else 80
        return cls(url=url, metadata=metadata or {}, index=index,
                   host=parts.hostname.lower(), port=port or default_port)

    @property
    def tls(self) -> bool:
        return self.url.lower().startswith('https:')


@dataclasses.dataclass(frozen=True)
class GlanceApiLocation(Location):
    """Glance's own image data API (``GET /v2/images/{id}/file``).

    Not a location Glance lists: it is how Glance serves any active image, so the
    full-copy handler always has it as a candidate.
    """

    scheme = 'glance'
    image_id: str = ''

    @classmethod
    def for_image(cls, endpoint: str, image_id: str, weight: int,
                  index: int) -> 'GlanceApiLocation':
        url = f'{endpoint.rstrip("/")}/v2/images/{urllib.parse.quote(image_id)}/file'
        return cls(url=url, metadata={'weight': weight}, index=index,
                   image_id=image_id)

    @property
    def display(self) -> str:
        return f'glance:{self.image_id} (image data API)'

    @property
    def endpoint_key(self) -> str:
        return 'glance-api:' + super().endpoint_key
