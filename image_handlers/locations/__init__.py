"""Typed image locations, one class per URL scheme, and a factory by scheme.

``parse_location`` never raises: a URL that fails validation becomes a
``MalformedLocation`` and an unknown scheme an ``UnknownLocation``, both carrying the
reason, so that nothing is silently dropped or guessed at.
"""
from __future__ import annotations

import urllib.parse
from typing import Any

from image_handlers import exceptions
from image_handlers.locations.base import Location, redact_url
from image_handlers.locations.file import FileLocation
from image_handlers.locations.http import GlanceApiLocation, HttpLocation
from image_handlers.locations.iscsi import IscsiLocation
from image_handlers.locations.rbd import RbdLocation
from image_handlers.locations.unusable import MalformedLocation, UnknownLocation

SCHEMES: dict[str, type[Location]] = {
    'rbd': RbdLocation,
    'file': FileLocation,
    'http': HttpLocation,
    'https': HttpLocation,
    'iscsi': IscsiLocation,
}

__all__ = ['Location', 'RbdLocation', 'FileLocation', 'HttpLocation',
           'GlanceApiLocation', 'IscsiLocation', 'UnknownLocation',
           'MalformedLocation', 'parse_location', 'redact_url', 'SCHEMES']


def parse_location(url: Any, metadata: dict | None = None, index: int = 0) -> Location:
    """Turn one Glance location into a typed Location (never raises)."""
    metadata = metadata if isinstance(metadata, dict) else {}
    if not isinstance(url, str) or not url:
        return MalformedLocation(url=str(url), metadata=metadata, index=index,
                                 error=f'location URL {url!r} is empty or not a string')
    scheme = urllib.parse.urlsplit(url).scheme.lower() if ':' in url else ''
    cls = SCHEMES.get(scheme)
    if cls is None:
        return UnknownLocation(url=url, metadata=metadata, index=index,
                               found_scheme=scheme or '<none>')
    try:
        return cls.from_url(url, metadata, index)
    except exceptions.InvalidLocation as exc:
        return MalformedLocation(url=url, metadata=metadata, index=index,
                                 error=str(exc))
