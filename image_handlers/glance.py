"""Read an image record and its locations from Glance, the way Nova does.

A keystoneauth session and adapter are built from nova.conf's ``[glance]`` section
(auth plugin, endpoint, retries), and python-glanceclient talks over them. Locations
come from three places, in this order, de-duplicated: the image record's
``locations`` (``show_multiple_locations``), its ``direct_url``
(``show_image_direct_url``) and the service-only ``GET /v2/images/{id}/locations``
(requested at the same time as the record).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import random
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import glanceclient
import requests
from glanceclient import exc as glance_exc
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg
from oslo_log import log as logging

from image_handlers import conf as ih_conf
from image_handlers import exceptions
from image_handlers.image import ImageInfo
from image_handlers.locations import (Location, MalformedLocation, parse_location,
                                      redact_url)

LOG = logging.getLogger(__name__)

_FIELDS = ('status', 'disk_format', 'container_format', 'size', 'virtual_size',
           'checksum', 'os_hash_algo', 'os_hash_value', 'owner', 'name')


class ImageSource(Protocol):
    """Where the chain reads image records and Glance's data endpoint from:
    GlanceReader here, Nova's own image API inside Nova (image_handlers.nova)."""

    @property
    def endpoint(self) -> str:
        """Glance's API root, without a version."""

    def get_image(self, image_id: str) -> ImageInfo:
        """The record and every location; raise ImageNotFound when unknown."""

    def auth_headers(self) -> dict[str, str]:
        """Headers authenticating a data request (fresh on every call)."""

    def key_manager_context(self) -> Any:
        """A context castellan reads signing certificates with (oslo.context)."""

    # Optional (rbd_import uses them when there): copy_to_store(image_id, store) ->
    # glance_import.STARTED/BUSY/PRESENT, and glance_info() -> {'stores': GET
    # /v2/info/stores, 'import': GET /v2/info/import}.


# Waits between retries of a failed Glance call: doubling from RETRY_DELAY up to
# RETRY_DELAY_MAX, each with +-25 % jitter so the hosts that lost Glance at the same
# moment do not all come back at the same moment (Nova's own client sleeps 1 s flat).
RETRY_DELAY = 0.5
RETRY_DELAY_MAX = 8.0


def retry_delay(attempt: int, rand: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (0-based)."""
    base = min(RETRY_DELAY_MAX, RETRY_DELAY * (2 ** attempt))
    return base * (rand or random).uniform(0.75, 1.25)


class GlanceReader:
    """Image records, locations and the data endpoint of one Glance."""

    def __init__(self, conf: cfg.ConfigOpts, sleep=time.sleep):
        group = ih_conf.GLANCE_GROUP
        self._auth = ks_loading.load_auth_from_conf_options(conf, group)
        self._session = ks_loading.load_session_from_conf_options(
            conf, group, auth=self._auth)
        if self._session.timeout is None:
            # [glance] timeout unset waits for ever on a Glance (or Keystone) that
            # accepts and never answers (a hung uWSGI): each call is bounded by
            # [image_handlers] read_timeout instead, and retried as a failure.
            self._session.timeout = conf.image_handlers.read_timeout
        self._adapter = ks_loading.load_adapter_from_conf_options(
            conf, group, session=self._session, auth=self._auth)
        self._retries = conf[group].num_retries
        self._sleep = sleep
        self._endpoint: str | None = None
        self._client = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def endpoint(self) -> str:
        """The image API root, as the service catalog or endpoint_override says."""
        if self._endpoint is None:
            try:
                endpoint = self._adapter.get_endpoint()
            except (ks_exc.ConnectFailure, ks_exc.ConnectTimeout) as exc:
                # Keystone is down or unreachable: not a configuration error.
                raise exceptions.SourceError(
                    f'{self._identity()} did not answer while looking up the Glance '
                    f'endpoint for nova.conf [glance]: {exc}; retry once it is back')
            except ks_exc.ClientException as exc:
                raise exceptions.ConfigError(
                    f'cannot find the Glance endpoint from nova.conf [glance]: {exc}')
            if not endpoint:
                raise exceptions.ConfigError(
                    'no Glance endpoint: set [glance] endpoint_override or a '
                    'catalog-backed auth plugin in nova.conf')
            # Version-less root: the data URL adds /v2/... itself.
            endpoint = endpoint.rstrip('/')
            for suffix in ('/v2', '/v2.0'):
                if endpoint.endswith(suffix):
                    endpoint = endpoint[:-len(suffix)]
            self._endpoint = endpoint
        return self._endpoint

    @property
    def client(self):
        if self._client is None:
            self._client = glanceclient.Client(
                '2', session=self._session, endpoint_override=self.endpoint)
        return self._client

    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a raw data request (refreshed each call)."""
        return dict(self._session.get_auth_headers(auth=self._auth) or {})

    def key_manager_context(self) -> Any:
        """Certificates are read with nova.conf's [glance] credentials: castellan
        takes the auth plugin from the context (``get_auth_plugin``)."""
        from oslo_context import context as oslo_context
        auth, session = self._auth, self._session

        class _Context(oslo_context.RequestContext):
            def get_auth_plugin(self):
                return auth

        try:
            project_id = auth.get_project_id(session) if auth else None
        except ks_exc.ClientException as exc:
            raise exceptions.Untrusted(
                f'cannot authenticate with nova.conf [glance] to read signing '
                f'certificates: {exc}') from exc
        return _Context(project_id=project_id)

    def get_image(self, image_id: str) -> ImageInfo:
        # The locations API does not depend on the record: both requests run at
        # once, since a serial round trip would cost half of an RBD clone again.
        images = self.client.images     # built here, not raced by the two threads
        located = self._background().submit(self._locations_api, image_id)
        raw = self._call(f'image {image_id}', images.get, image_id)
        return image_info(image_id, raw, *located.result())

    def copy_to_store(self, image_id: str, store: str) -> str:
        """Ask Glance to copy the image into ``store`` (import method copy-image):
        glance_import.STARTED, BUSY or PRESENT; CopyRefused with Glance's reason."""
        from image_handlers import glance_import
        return self._call(f'copy-image of {image_id} to store {store}',
                          glance_import.copy_with_glanceclient, self.client,
                          image_id, store)

    def glance_info(self) -> dict[str, Any]:
        """Glance's stores and import methods (GET /v2/info/stores and /import)."""
        images = self.client.images
        return {'stores': self._call('store list', images.get_stores_info),
                'import': self._call('import methods', images.get_import_info)}

    def _background(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix='glance-locations')
        return self._executor

    def _locations_api(self, image_id: str
                       ) -> tuple[list[tuple[Any, Any] | Location], str]:
        """The service-only locations API (newer Glance), and a note for explain;
        absent or refused is not an error."""
        get = getattr(self.client.images, 'get_image_locations', None)
        if get is None:
            return [], 'locations API: not supported by this python-glanceclient'
        try:
            locs = get(image_id)
        except (glance_exc.HTTPForbidden, glance_exc.HTTPUnauthorized):
            return [], 'locations API: forbidden (needs the service role)'
        except (glance_exc.HTTPNotFound, glance_exc.HTTPMethodNotAllowed,
                glance_exc.HTTPNotImplemented, glance_exc.HTTPBadRequest):
            return [], 'locations API: not offered by this Glance'
        except (glance_exc.HTTPException, glance_exc.CommunicationError,
                ks_exc.ClientException) as exc:
            LOG.warning('Glance locations API failed for image %s: %s', image_id, exc)
            return [], f'locations API: error {exc}'
        # Each entry as the record's are read: junk is refused with its reason.
        return ([_listed(l) for l in locs], f'locations API: {len(locs)} location(s)')

    def _call(self, what: str, func, *args):
        last: Exception | None = None
        for attempt in range(self._retries + 1):
            try:
                return func(*args)
            except glance_exc.HTTPNotFound:
                raise exceptions.ImageNotFound(
                    f'{what} not found in Glance at {self.endpoint} (or not visible '
                    f'to the configured credentials): check the image id')
            except (glance_exc.HTTPUnauthorized, glance_exc.HTTPForbidden) as exc:
                raise exceptions.ConfigError(
                    f'Glance refused the credentials from nova.conf [glance] '
                    f'for {what}: {exc}')
            except (glance_exc.CommunicationError, glance_exc.HTTPServiceUnavailable,
                    glance_exc.HTTPInternalServerError, ks_exc.ConnectFailure,
                    ks_exc.ConnectTimeout, glance_exc.InvalidEndpoint) as exc:
                if isinstance(exc, glance_exc.InvalidEndpoint) and not _timed_out(exc):
                    raise
                last = exc
                LOG.warning('Glance call for %s failed (attempt %d of %d): %s',
                            what, attempt + 1, self._retries + 1, exc)
                if attempt < self._retries:
                    self._sleep(retry_delay(attempt))
        who = f'Glance at {self.endpoint}'
        auth_url = getattr(self._auth, 'auth_url', None)
        if auth_url and isinstance(last, (ks_exc.ConnectFailure, ks_exc.ConnectTimeout)) \
                and urllib.parse.urlsplit(auth_url).netloc in str(last):
            who = f'{self._identity()} (asked for a token for nova.conf [glance])'
        raise exceptions.SourceError(
            f'{who} did not answer for {what} after {self._retries + 1} attempts: '
            f'{last}; retry once it is back')

    def _identity(self) -> str:
        """Keystone, as nova.conf [glance] names it, for error messages."""
        auth_url = getattr(self._auth, 'auth_url', None)
        return f'Keystone at {auth_url}' if auth_url else 'the identity service'


def _timed_out(exc: BaseException) -> bool:
    """glanceclient reports a request that timed out (a Glance that accepts and
    never answers) as InvalidEndpoint; the timeout is in its context."""
    while exc is not None:
        if isinstance(exc, (ks_exc.ConnectTimeout, requests.exceptions.Timeout)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def image_info(image_id: str, record: Mapping[str, Any],
               api_entries: Sequence[tuple[Any, Any] | Location] = (),
               api_note: str | None = None) -> ImageInfo:
    """ImageInfo from an image record, as glanceclient gives it or as Nova's image
    API does (Nova nests the non-base properties under ``properties``).

    Locations come from the record's ``locations``, its ``direct_url`` and the
    locations API entries, in that order, de-duplicated; ``location_sources``
    says which of them were there, so explain can account for an empty list.
    """
    info = ImageInfo(id=image_id, **{f: record.get(f) for f in _FIELDS})
    info.properties = {k: v for k, v in record.items()
                       if k not in _FIELDS and k != 'properties'}
    nested = record.get('properties') or {}
    if isinstance(nested, Mapping):
        info.properties.update(nested)
    else:                               # not Nova's nesting: kept as it is
        info.properties['properties'] = nested
    entries: list[tuple[Any, Any] | Location] = []
    if 'locations' in record:
        listed = record.get('locations') or []
        if isinstance(listed, (str, bytes)) or not isinstance(listed, Sequence):
            info.location_sources.append(
                f'image record: "locations" is a {type(listed).__name__}, not a '
                f'list: ignored')
            listed = []
        else:
            info.location_sources.append(f'image record: {len(listed)} location(s)')
        entries += [_listed(l) for l in listed]
    else:
        info.location_sources.append(
            'image record: no "locations" (Glance show_multiple_locations is off)')
    if record.get('direct_url'):
        entries.append((record['direct_url'], {}))
        info.location_sources.append('image record: direct_url')
    entries += api_entries
    if api_note:
        info.location_sources.append(api_note)
    seen: set[str] = set()
    for entry in entries:
        if isinstance(entry, Location):     # a junk entry, refused with its reason
            info.locations.append(
                dataclasses.replace(entry, index=len(info.locations)))
            continue
        url, metadata = entry
        if isinstance(url, str):            # anything else is refused, not compared
            if url in seen:
                continue
            seen.add(url)
        info.locations.append(parse_location(url, metadata, len(info.locations)))
    return info


def _listed(item: Any) -> tuple[Any, Any] | Location:
    """(url, metadata) of one entry of a record's ``locations``; an entry that is
    not an object is refused as it is (not read as a URL)."""
    if isinstance(item, Mapping):
        return item.get('url'), item.get('metadata') or {}
    shown = redact_url(item) if isinstance(item, str) else repr(item)[:200]
    return MalformedLocation(
        url=str(item) if isinstance(item, str) else '', error=(
            f'image record location entry {shown} is a {type(item).__name__}, not '
            f'an object with "url" and "metadata"'))
