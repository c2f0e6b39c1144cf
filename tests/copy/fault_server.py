"""A small threaded HTTP/1.1 server for the copy engine's tests.

It serves one in-memory object with Range and If-Range support (strong ETag,
Last-Modified) and switchable faults, and counts what it sent per request so
tests can assert how many bytes a resume really re-fetched.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import re
import socket
import ssl
import threading

_RANGE = re.compile(r'^bytes=(\d+)-(\d*)$')
LAST_MODIFIED = 'Mon, 01 Jan 2024 00:00:00 GMT'


@dataclasses.dataclass
class Faults:
    close_after: int | None = None    # close the connection after N body bytes
    close_every_time: bool = False    # ... on every response, not just the next one
    ignore_range: bool = False        # always answer 200 with the whole object
    reject_range: bool = False        # answer 400 to a ranged GET (Glance's RBD store)
    wrong_bytes: bool = False         # flip one byte in the middle of the object
    status_once: int | None = None    # next request gets this status (e.g. 500)
    status_always: int | None = None  # every request gets this status (e.g. 404)
    pause_after: int | None = None    # stop sending after N body bytes until resumed
    fail_from_request: int | None = None  # the Nth request (0-based) and later get 503
    redirects: dict[str, str] = dataclasses.field(default_factory=dict)
    headers: dict[str, str] = dataclasses.field(default_factory=dict)  # on the object


@dataclasses.dataclass
class RequestLog:
    path: str
    headers: dict[str, str]
    status: int = 0
    bytes_sent: int = 0


class FaultServer:
    def __init__(self, data: bytes, path: str = '/image',
                 tls: ssl.SSLContext | None = None) -> None:
        self.path = path
        self.scheme = 'https' if tls else 'http'
        self.faults = Faults()
        self.requests: list[RequestLog] = []
        self.resume = threading.Event()      # releases a pause_after stall
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.set_data(data)
        self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={'poll_interval': 0.02},
                                        name='fault-server', daemon=True)
        self._thread.start()

    def set_data(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.etag = '"%s"' % hashlib.sha1(data).hexdigest()

    @property
    def url(self) -> str:
        return self.url_for(self.path)

    def url_for(self, path: str) -> str:
        return f'{self.scheme}://127.0.0.1:{self._httpd.server_address[1]}{path}'

    @property
    def bytes_sent(self) -> int:
        with self._lock:
            return sum(r.bytes_sent for r in self.requests)

    def stop(self) -> None:
        self._stopping.set()
        self.resume.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    # -- serving -----------------------------------------------------------

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        log = RequestLog(h.path, dict(h.headers.items()))
        with self._lock:
            self.requests.append(log)
            faults = self.faults
            status = faults.status_always or faults.status_once
            faults.status_once = None
            if (faults.fail_from_request is not None
                    and len(self.requests) > faults.fail_from_request):
                status = status or 503
            if faults.reject_range and 'Range' in h.headers:
                status = status or 400
            redirect = faults.redirects.get(h.path)
            close_after = None
            if redirect is None and status is None and h.path == self.path:
                close_after = faults.close_after
                if not faults.close_every_time:
                    faults.close_after = None
        if redirect is not None:
            log.status = 302
            h.send_response(302)
            h.send_header('Location', redirect)
            h.send_header('Content-Length', '0')
            h.end_headers()
            return
        if status is None and h.path != self.path:
            status = 404
        if status is not None:
            log.status = status
            body = f'fault {status}\n'.encode()
            h.send_response(status)
            h.send_header('Content-Length', str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        self._serve_object(h, log, faults, close_after)

    def _serve_object(self, h, log: RequestLog, faults: Faults,
                      close_after: int | None) -> None:
        data = self.data
        if faults.wrong_bytes:
            wrong = bytearray(data)
            wrong[len(wrong) // 2] ^= 0xFF
            data = memoryview(bytes(wrong))
        size = len(data)
        start, end = 0, size
        status = 200
        match = _RANGE.match(h.headers.get('Range', ''))
        if_range = h.headers.get('If-Range')
        if match and not faults.ignore_range and if_range in (None, self.etag,
                                                               LAST_MODIFIED):
            start = int(match.group(1))
            end = min(size, int(match.group(2)) + 1) if match.group(2) else size
            if start >= size:
                log.status = 416
                h.send_response(416)
                h.send_header('Content-Range', f'bytes */{size}')
                h.send_header('Content-Length', '0')
                h.end_headers()
                return
            status = 206
        log.status = status
        h.send_response(status)
        h.send_header('Content-Length', str(end - start))
        h.send_header('ETag', self.etag)
        h.send_header('Last-Modified', LAST_MODIFIED)
        h.send_header('Accept-Ranges', 'bytes')
        for name, value in faults.headers.items():
            h.send_header(name, value)
        if status == 206:
            h.send_header('Content-Range', f'bytes {start}-{end - 1}/{size}')
        h.end_headers()
        h.wfile.flush()
        limit = end - start
        if close_after is not None:
            limit = min(limit, close_after)
        self._send(h, log, data[start:start + limit], faults.pause_after)
        if limit < end - start:
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, h, log: RequestLog, body: memoryview,
              pause_after: int | None) -> None:
        sock = h.connection
        pos = 0
        try:
            while pos < len(body):
                if pause_after is not None and log.bytes_sent >= pause_after:
                    self.resume.wait()
                    pause_after = None
                    if self._stopping.is_set():
                        return
                step = 1 << 20
                if pause_after is not None:
                    step = min(step, pause_after - log.bytes_sent)
                chunk = body[pos:pos + step]
                sock.sendall(chunk)
                pos += len(chunk)
                with self._lock:
                    log.bytes_sent += len(chunk)
        except OSError:
            h.close_connection = True


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
        self.server.owner.handle(self)

    def log_message(self, format, *args) -> None:  # noqa: A002
        pass
