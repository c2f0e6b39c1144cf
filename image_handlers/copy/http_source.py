"""HttpSource: ranged GETs on http.client.

http.client rather than requests because its ``readinto`` fills the engine's
large preallocated buffers straight from the socket: no per-chunk objects, no
per-chunk Python work, the GIL released during the reads.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import re
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from oslo_log import log as logging

from image_handlers import exceptions
from image_handlers.copy.source import TransientSourceError
from image_handlers.locations.base import redact_url

LOG = logging.getLogger(__name__)

HeadersArg = Mapping[str, str] | Callable[[], Mapping[str, str]] | None

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r'^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$', re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r'^\s*bytes\s+\*/(\d+)\s*$', re.IGNORECASE)


class HttpSource:
    """An image readable with HTTP GET at ``url`` (http or https).

    ``headers`` is a mapping or a callable returning one; a callable is called
    for every request so an expiring token can be refreshed between retries.
    Caller headers and URL credentials are only sent to the URL's own origin,
    never to another host a redirect points at.

    ``proxy`` (http://HOST:PORT of an HTTP cache, copy/cache_tier.py): every GET goes
    to it in the form a shared cache can answer: absolute URI, the origin's Host,
    Range and If-Range as for the origin, nothing per host. Caller headers and URL
    credentials are then NOT sent (the cache would serve what they unlock to anyone
    asking for the URL) unless ``proxy_gets_auth`` says the operator allows it.
    """

    def __init__(self, url: str, headers: HeadersArg = None, *,
                 connect_timeout: float | None = None,
                 read_timeout: float | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 max_redirects: int = 5, proxy: str | None = None,
                 proxy_gets_auth: bool = False) -> None:
        parts = _split(url)
        self.url = url
        self.description = redact_url(url)
        self._proxy = _proxy_parts(proxy, parts) if proxy else None
        self._proxy_gets_auth = proxy_gets_auth
        if self._proxy is not None:
            self.description += f' via cache {redact_url(proxy)}'
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_redirects = max_redirects
        self._headers = headers
        self._ssl_context = ssl_context
        self._origin = _origin(parts)
        self._basic_auth = _basic_auth(parts)
        self._validator: str | None = None
        self._no_ranges = False     # the server answered 400 to a ranged GET
        # Content-Encodings a wrapper decodes (compression.CompressedSource sets
        # them); ranges and lengths are then in the encoded bytes. Any other
        # encoding is refused: Accept-Encoding is always identity.
        self.content_encodings: frozenset[str] = frozenset()
        self._identity: dict[str, Any] = {'url': _identity_url(parts)}

    def apply_timeouts(self, connect_timeout: float, read_timeout: float) -> None:
        """Take the copy options' timeouts where the caller set none."""
        if self.connect_timeout is None:
            self.connect_timeout = connect_timeout
        if self.read_timeout is None:
            self.read_timeout = read_timeout

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def expect(self, identity: Mapping[str, Any]) -> None:
        """Resume data described by ``identity`` (from a checkpoint): its
        validator goes in If-Range, so a changed object is resent whole."""
        self._validator = _validator(identity.get('etag'), identity.get('last_modified'))

    def open(self, offset: int) -> 'HttpStream':
        if self._no_ranges:
            offset = 0
        conn, resp, url = self._get(offset)
        if offset and resp.status == 400:
            # Glance 33 answers 400 to a ranged GET of an image in its RBD store
            # (measured): read it whole instead; the engine then starts over.
            conn.close()
            LOG.warning('GET %s: HTTP 400 to a request from byte %d: this server '
                        'refuses ranged reads of it; reading it whole instead',
                        redact_url(url), offset)
            self._no_ranges = True
            offset = 0
            conn, resp, url = self._get(0)
        try:
            return self._stream(conn, resp, url, offset)
        except BaseException:
            conn.close()
            raise

    # -- one request, following redirects --------------------------------

    def _get(self, offset: int) -> tuple[http.client.HTTPConnection,
                                         http.client.HTTPResponse, str]:
        url = self.url
        for _hop in range(self.max_redirects + 1):
            parts = _split(url)
            same_origin = _origin(parts) == self._origin
            if self._proxy is not None:
                conn = self._connect(self._proxy, url)
                target = _absolute_target(parts)
                headers = self._request_headers(
                    offset, same_origin and self._proxy_gets_auth)
                headers['Host'] = _host_header(parts)
            else:
                conn = self._connect(parts, url)
                target = _request_target(parts)
                headers = self._request_headers(offset, same_origin)
            try:
                conn.request('GET', target, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise TransientSourceError(
                    f'GET {redact_url(url)} failed: {_describe(exc)}') from exc
            if resp.status not in REDIRECT_STATUSES:
                return conn, resp, url
            location = resp.getheader('Location')
            conn.close()
            if not location:
                raise exceptions.SourceError(
                    f'GET {redact_url(url)}: HTTP {resp.status} redirect without a '
                    f'Location header')
            url = self._follow(url, location)
        raise exceptions.SourceError(
            f'GET {self.description}: more than {self.max_redirects} redirects')

    def _follow(self, url: str, location: str) -> str:
        new = urllib.parse.urljoin(url, location)
        old_scheme = urllib.parse.urlsplit(url).scheme
        new_scheme = urllib.parse.urlsplit(new).scheme
        if new_scheme not in ('http', 'https') or (
                old_scheme == 'https' and new_scheme == 'http'):
            raise exceptions.SourceError(
                f'GET {redact_url(url)} redirects to {redact_url(new)}: refused '
                f'(only http(s), and never from https down to http)')
        if self._proxy is not None and new_scheme != 'http':
            raise exceptions.SourceError(
                f'GET {self.description} redirects to {redact_url(new)}: a cache '
                f'cannot read inside TLS; read that location directly')
        LOG.debug('%s redirects to %s', redact_url(url), redact_url(new))
        return new

    def _connect(self, parts: urllib.parse.SplitResult,
                 url: str) -> http.client.HTTPConnection:
        if parts.scheme == 'https':
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self.connect_timeout,
                context=self._ssl_context)
        else:
            conn = http.client.HTTPConnection(
                parts.hostname, parts.port, timeout=self.connect_timeout)
        try:
            conn.connect()
            conn.sock.settimeout(self.read_timeout)
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise exceptions.SourceError(
                f'GET {redact_url(url)}: TLS certificate not trusted: '
                f'{exc.verify_message or exc}') from exc
        except OSError as exc:
            conn.close()
            raise TransientSourceError(
                f'connecting to {redact_url(url)} failed: {_describe(exc)}') from exc
        return conn

    def _request_headers(self, offset: int, same_origin: bool) -> dict[str, str]:
        headers = {'Accept-Encoding': 'identity', 'User-Agent': 'image_handlers'}
        if same_origin:
            if self._basic_auth:
                headers['Authorization'] = self._basic_auth
            extra = self._headers() if callable(self._headers) else self._headers
            headers.update(extra or {})
        if offset:
            headers['Range'] = f'bytes={offset}-'
            if self._validator:
                headers['If-Range'] = self._validator
        return headers

    # -- the response ----------------------------------------------------

    def _stream(self, conn: http.client.HTTPConnection,
                resp: http.client.HTTPResponse, url: str,
                offset: int) -> 'HttpStream':
        shown = redact_url(url)
        status = resp.status
        if status == 416 and offset:
            return self._unsatisfiable(conn, resp, shown, offset)
        if 400 <= status < 500:
            raise exceptions.SourceError(
                f'GET {shown}: HTTP {status} {resp.reason}')
        if status >= 500:
            raise TransientSourceError(f'GET {shown}: HTTP {status} {resp.reason}')
        encoding = (resp.getheader('Content-Encoding') or 'identity').strip().lower()
        if encoding != 'identity' and encoding not in self.content_encodings:
            raise exceptions.SourceError(
                f'GET {shown}: the server sent Content-Encoding {encoding} although '
                f'only identity was accepted')
        length = _content_length(resp, shown)
        if status == 200:
            start, total = 0, length
        elif status == 206:
            start, total, length = _partial(resp, shown, offset, length)
        else:
            raise exceptions.SourceError(
                f'GET {shown}: unexpected HTTP {status} {resp.reason}')
        etag = resp.getheader('ETag')
        last_modified = resp.getheader('Last-Modified')
        self._identity = {'url': self._identity['url'], 'etag': etag,
                          'last_modified': last_modified, 'size': total}
        self._validator = _validator(etag, last_modified)
        stream = HttpStream(conn, resp, start, total, length, shown)
        stream.content_encoding = encoding
        return stream

    def _unsatisfiable(self, conn: http.client.HTTPConnection,
                       resp: http.client.HTTPResponse, shown: str,
                       offset: int) -> 'HttpStream':
        match = _UNSATISFIED_RANGE.match(resp.getheader('Content-Range') or '')
        resp.close()
        if match and int(match.group(1)) == offset:
            # The partial already holds everything: nothing left to read.
            return HttpStream(conn, None, offset, offset, 0, shown)
        conn.close()
        LOG.warning('%s: the server cannot resume at byte %d (HTTP 416, %s); '
                    'starting over from byte 0', shown, offset,
                    resp.getheader('Content-Range') or 'no Content-Range')
        return self.open(0)


class HttpStream:
    """The body of one GET; ``readinto`` reads straight into the caller's buffer."""

    def __init__(self, conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse | None, start: int,
                 total: int | None, length: int | None, shown: str) -> None:
        self.start = start
        self.total = total
        self.content_encoding = 'identity'     # as the server labelled the bytes
        self._conn = conn
        self._resp = resp
        self._pos = start
        self._end = None if length is None else start + length
        self._shown = shown

    def readinto(self, buf: memoryview) -> int:
        if self._resp is None:
            return 0
        try:
            n = self._resp.readinto(buf)
        except (OSError, http.client.HTTPException) as exc:
            raise TransientSourceError(
                f'reading {self._shown} at byte {self._pos} failed: '
                f'{_describe(exc)}') from exc
        if not n and len(buf) and self._end is not None and self._pos < self._end:
            raise TransientSourceError(
                f'{self._shown}: connection closed at byte {self._pos} of '
                f'{self._end}')
        self._pos += n
        return n

    def abort(self) -> None:
        """Wake a thread blocked in ``readinto`` (shutdown, not close: the
        reading thread still owns the file objects)."""
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
        self._conn.close()


def _split(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as exc:
        raise exceptions.InvalidLocation(
            f'malformed URL {redact_url(url)!r}: {exc}') from None
    if parts.scheme not in ('http', 'https') or not parts.hostname:
        raise exceptions.InvalidLocation(
            f'malformed URL {redact_url(url)!r}: expected http(s)://HOST/PATH')
    return parts


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int]:
    default = 443 if parts.scheme == 'https' else 80
    return parts.scheme, (parts.hostname or '').lower(), parts.port or default


def _identity_url(parts: urllib.parse.SplitResult) -> str:
    """The URL without credentials; a query (maybe a signature) only as a hash."""
    scheme, host, port = _origin(parts)
    if ':' in host:
        host = f'[{host}]'
    url = f'{scheme}://{host}:{port}{parts.path or "/"}'
    if parts.query:
        url += '?sha256=' + hashlib.sha256(parts.query.encode()).hexdigest()
    return url


def _proxy_parts(proxy: str, parts: urllib.parse.SplitResult) -> urllib.parse.SplitResult:
    """The cache's address; an https origin cannot be cached (a tunnel would be
    opaque to it), so it is refused with what to do instead."""
    if parts.scheme != 'http':
        raise exceptions.InvalidLocation(
            f'{redact_url(parts.geturl())} is https: a cache cannot read inside TLS '
            f'(a CONNECT tunnel is never cached); give the cache an http origin or a '
            f'mirror= route, or read it directly')
    try:
        proxy_parts = _split(proxy)
    except exceptions.InvalidLocation as exc:
        raise exceptions.InvalidLocation(f'cache proxy: {exc}') from None
    if proxy_parts.path not in ('', '/') or proxy_parts.query:
        raise exceptions.InvalidLocation(
            f'cache proxy {redact_url(proxy)!r}: expected http(s)://HOST:PORT, '
            f'without a path')
    return proxy_parts


def _absolute_target(parts: urllib.parse.SplitResult) -> str:
    """What a proxy is asked for: the origin URL without credentials (the cache
    key: the same for every host)."""
    return f'{parts.scheme}://{_host_header(parts)}{_request_target(parts)}'


def _host_header(parts: urllib.parse.SplitResult) -> str:
    return parts.netloc.rpartition('@')[2]


def _request_target(parts: urllib.parse.SplitResult) -> str:
    return (parts.path or '/') + (f'?{parts.query}' if parts.query else '')


def _basic_auth(parts: urllib.parse.SplitResult) -> str | None:
    if parts.username is None:
        return None
    pair = (f'{urllib.parse.unquote(parts.username)}:'
            f'{urllib.parse.unquote(parts.password or "")}')
    return 'Basic ' + base64.b64encode(pair.encode()).decode('ascii')


def _validator(etag: str | None, last_modified: str | None) -> str | None:
    # If-Range needs a strong validator: a weak ETag never matches.
    if etag and not etag.startswith('W/'):
        return etag
    return last_modified or None


def _content_length(resp: http.client.HTTPResponse, shown: str) -> int | None:
    value = resp.getheader('Content-Length')
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        length = -1
    if length < 0:
        raise exceptions.SourceError(f'GET {shown}: bad Content-Length {value!r}')
    return length


def _partial(resp: http.client.HTTPResponse, shown: str, offset: int,
             length: int | None) -> tuple[int, int | None, int]:
    header = resp.getheader('Content-Range') or ''
    match = _CONTENT_RANGE.match(header)
    if not match:
        raise exceptions.SourceError(
            f'GET {shown}: HTTP 206 with a missing or unsupported Content-Range '
            f'{header!r} (asked for bytes={offset}-)')
    first, last, total = match.groups()
    start, end = int(first), int(last) + 1
    if start != offset or end <= start:
        raise exceptions.SourceError(
            f'GET {shown}: asked for bytes={offset}- but the server sent '
            f'Content-Range {header!r}')
    if length is not None and length != end - start:
        raise exceptions.SourceError(
            f'GET {shown}: Content-Length {length} does not match Content-Range '
            f'{header!r}')
    return start, None if total == '*' else int(total), end - start


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return 'timed out'
    return str(exc) or type(exc).__name__
