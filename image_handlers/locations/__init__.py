"""Typed image locations, one class per URL scheme, and a factory by scheme.

Location classes are ``image_handlers.locations`` entry points named by scheme, so a
handler that reads a new scheme brings its class in its own files. ``parse_location``
never raises: a URL that fails validation becomes a
``MalformedLocation`` and an unknown scheme an ``UnknownLocation``, both carrying the
reason, so that nothing is silently dropped or guessed at.
"""
from __future__ import annotations

import functools
import urllib.parse
from typing import Any

import stevedore
from oslo_log import log as logging

from image_handlers import exceptions
from image_handlers.locations.base import Location, redact_url
from image_handlers.locations.cinder import CinderLocation
from image_handlers.locations.file import FileLocation
from image_handlers.locations.http import GlanceApiLocation, HttpLocation
from image_handlers.locations.iscsi import IscsiLocation
from image_handlers.locations.rbd import RbdLocation
from image_handlers.locations.unusable import MalformedLocation, UnknownLocation

LOG = logging.getLogger(__name__)
NAMESPACE = 'image_handlers.locations'

__all__ = ['CinderLocation', 'Location', 'RbdLocation', 'FileLocation', 'HttpLocation',
           'GlanceApiLocation', 'IscsiLocation', 'UnknownLocation',
           'MalformedLocation', 'parse_location', 'redact_url', 'schemes']


@functools.cache
def schemes() -> dict[str, type[Location]]:
    """Scheme -> location class, from the installed entry points (read once)."""
    def failed(manager, entrypoint, exc):
        LOG.warning('location class for scheme %s could not be loaded: %s',
                    entrypoint.name, exc)
    manager = stevedore.ExtensionManager(NAMESPACE, invoke_on_load=False,
                                         on_load_failure_callback=failed)
    return {ext.name.lower(): ext.plugin for ext in manager}


def parse_location(url: Any, metadata: dict | None = None, index: int = 0) -> Location:
    """Turn one Glance location into a typed Location (never raises)."""
    metadata = metadata if isinstance(metadata, dict) else {}
    if not isinstance(url, str) or not url:
        return MalformedLocation(url=str(url), metadata=metadata, index=index,
                                 error=f'location URL {url!r} is empty or not a string')
    try:
        scheme = urllib.parse.urlsplit(url).scheme.lower() if ':' in url else ''
    except ValueError as exc:       # e.g. an unclosed "[" (IPv6 host)
        return MalformedLocation(url=url, metadata=metadata, index=index,
                                 error=f'malformed location URL: {exc}')
    cls = schemes().get(scheme)
    if cls is None:
        return UnknownLocation(url=url, metadata=metadata, index=index,
                               found_scheme=scheme or '<none>')
    try:
        return cls.from_url(url, metadata, index)
    except exceptions.InvalidLocation as exc:
        return MalformedLocation(url=url, metadata=metadata, index=index,
                                 error=str(exc))
