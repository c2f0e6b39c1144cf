"""The location interface: a typed, validated view of one Glance location URL.

A location is a *claim* made by whoever added it to Glance (see OSSN-0065): the
classes here only check that a URL is well formed for its scheme. Whether a handler
may trust what the URL names is the handler's decision, with a reason.
"""
from __future__ import annotations

import dataclasses
import urllib.parse
from typing import Any, ClassVar

from image_handlers import exceptions


@dataclasses.dataclass(frozen=True)
class Location:
    """One location of an image, in Glance's order (``index``)."""

    url: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    index: int = 0

    scheme: ClassVar[str] = ''

    @classmethod
    def from_url(cls, url: str, metadata: dict[str, Any] | None = None,
                 index: int = 0) -> 'Location':
        """Parse and validate ``url``; raise InvalidLocation naming the problem.

        Each scheme class overrides this; the base class parses nothing.
        """
        raise exceptions.InvalidLocation(
            f'{cls.__name__} cannot be built from a URL ({redact_url(url)!r})')

    @property
    def display(self) -> str:
        """The URL as safe to print: user, password and query tokens removed."""
        return redact_url(self.url)

    @property
    def endpoint_key(self) -> str:
        """What throughput is measured per: the serving endpoint, not one image."""
        parts = urllib.parse.urlsplit(self.url)
        return f'{parts.scheme}://{parts.hostname or ""}' + (
            f':{parts.port}' if parts.port else '')

    @property
    def usable(self) -> bool:
        return True

    def weight_for(self, host: str) -> int:
        """Operator weight from location metadata: per-host first, then global."""
        host_weights = self.metadata.get('host_weights')
        if isinstance(host_weights, dict) and host in host_weights:
            return _as_int(host_weights[host])
        return _as_int(self.metadata.get('weight', 0))

    def invalid(self, why: str) -> exceptions.InvalidLocation:
        return exceptions.InvalidLocation(
            f'malformed {self.scheme or "location"} URL {redact_url(self.url)!r}: {why}')


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def redact_url(url: str) -> str:
    """Drop credentials from a URL before it reaches a log or a report."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return '<unparsable URL>'
    netloc = parts.netloc
    if '@' in netloc:
        netloc = '***@' + netloc.rsplit('@', 1)[1]
    query = '***' if parts.query else ''
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ''))


def unquote_strict(part: str, what: str, loc: Location) -> str:
    """URL-unquote one path component; refuse empty parts and slashes inside it."""
    value = urllib.parse.unquote(part)
    if not value:
        raise loc.invalid(f'{what} is empty')
    if '/' in value or '\x00' in value:
        raise loc.invalid(f'{what} {value!r} contains "/" or NUL')
    return value
