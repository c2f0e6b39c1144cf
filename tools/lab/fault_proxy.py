"""An HTTP fault proxy between a copy and its real source (the lab's nginx, Glance).

It relays one request per connection to the upstream and, when the plan says so,
breaks that response at a chosen body offset the way networks and servers break:

    reset         an RST after N body bytes (SO_LINGER 0)
    stall         stop sending after N bytes for ``stall`` seconds, then close
    truncate      a clean close (FIN) after N bytes
    corrupt       flip the body byte at offset N, send everything
    drip          send the first N bytes in 512-byte drops with a pause between
    status        answer 503 instead of relaying (the upstream is not asked)
    length        announce a Content-Length N bytes longer than the body, then close
    range         answer a ranged request with a Content-Range that starts 1 byte
                  later than asked (the body moves with it)

Counts what it forwarded per request, so a trial can tell how many bytes a resume
fetched again. Stdlib only; one thread per connection.
"""
from __future__ import annotations

import dataclasses
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable

KINDS = ('reset', 'stall', 'truncate', 'corrupt', 'drip', 'status', 'length', 'range')
_CONTENT_RANGE = re.compile(rb'bytes (\d+)-(\d+)/(\d+|\*)', re.I)


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    offset: int = 0             # body byte where it strikes
    stall: float = 2.0          # seconds, for 'stall'


@dataclasses.dataclass
class Forwarded:
    request_line: str
    status: int = 0
    body_bytes: int = 0         # body bytes sent to the client
    fault: Fault | None = None


Plan = Callable[[int, str], Fault | None]   # (request number, request line) -> fault


class FaultProxy:
    """``FaultProxy(upstream_base_url, plan).start()``; ``url_for(path)``."""

    def __init__(self, upstream: str, plan: Plan | None = None) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname or '127.0.0.1', parts.port or 80)
        self.plan: Plan = plan or (lambda n, line: None)
        self.log: list[Forwarded] = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(('127.0.0.1', 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name='fault-proxy')

    def start(self) -> 'FaultProxy':
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            socket.create_connection(('127.0.0.1', self.port), timeout=1).close()
        except OSError:
            pass
        self._thread.join(5)
        self._sock.close()

    def url_for(self, path: str) -> str:
        return f'http://127.0.0.1:{self.port}/{path.lstrip("/")}'

    @property
    def body_bytes(self) -> int:
        with self._lock:
            return sum(f.body_bytes for f in self.log)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if self._stop.is_set():
                client.close()
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    # -- one request --------------------------------------------------------------

    def _relay(self, client: socket.socket) -> None:
        with client:
            head = _read_head(client)
            if not head:
                return
            line = head.split(b'\r\n', 1)[0].decode('latin-1')
            with self._lock:
                number = len(self.log)
                record = Forwarded(line)
                self.log.append(record)
            fault = self.plan(number, line)
            record.fault = fault
            if fault is not None and fault.kind == 'status':
                record.status = 503
                client.sendall(b'HTTP/1.1 503 Service Unavailable\r\nContent-Length: 6'
                               b'\r\nConnection: close\r\n\r\nfault\n')
                return
            head = _close_after(head)
            try:
                upstream = socket.create_connection(self.upstream, timeout=30)
            except OSError:
                return
            with upstream:
                upstream.sendall(head)
                reply = _read_head(upstream)
                if not reply:
                    return
                head_only, sep, rest = reply.partition(b'\r\n\r\n')
                record.status = int(head_only.split(b'\r\n', 1)[0].split()[1])
                body = _body_reader(upstream, rest)
                self._forward(client, head_only + sep, body, fault, record)

    def _forward(self, client, reply: bytes, body, fault: Fault | None,
                 record: Forwarded) -> None:
        kind = fault.kind if fault else None
        skip = 0
        if kind == 'length':
            reply = _rewrite_length(reply, fault.offset or 1)
        elif kind == 'range' and b' 206 ' in reply.split(b'\r\n', 1)[0] + b' ':
            reply, skip = _shift_range(reply)
        client.sendall(reply)
        sent = 0
        for chunk in body:
            if skip:
                drop = min(skip, len(chunk))
                chunk, skip = chunk[drop:], skip - drop
                if not chunk:
                    continue
            if kind in ('reset', 'stall', 'truncate') and sent + len(chunk) >= fault.offset:
                chunk = chunk[:max(0, fault.offset - sent)]
                self._send(client, chunk, record)
                if kind == 'reset':
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack('ii', 1, 0))
                elif kind == 'stall':
                    time.sleep(fault.stall)
                return
            if kind == 'corrupt' and sent <= fault.offset < sent + len(chunk):
                chunk = bytearray(chunk)
                chunk[fault.offset - sent] ^= 0xFF
                chunk = bytes(chunk)
            if kind == 'drip' and sent < fault.offset:
                for i in range(0, len(chunk), 512):
                    self._send(client, chunk[i:i + 512], record)
                    time.sleep(0.0005)
            elif not self._send(client, chunk, record):
                return
            sent += len(chunk)

    def _send(self, client, chunk: bytes, record: Forwarded) -> bool:
        try:
            client.sendall(chunk)
        except OSError:
            return False
        with self._lock:
            record.body_bytes += len(chunk)
        return True


def _read_head(sock: socket.socket) -> bytes:
    data = b''
    while b'\r\n\r\n' not in data:
        try:
            got = sock.recv(65536)
        except OSError:
            return b''
        if not got:
            return b''
        data += got
    return data


def _close_after(head: bytes) -> bytes:
    """One request per upstream connection: ask the upstream to close after it."""
    lines = [l for l in head.split(b'\r\n\r\n', 1)[0].split(b'\r\n')
             if not l.lower().startswith(b'connection:')]
    return b'\r\n'.join(lines + [b'Connection: close']) + b'\r\n\r\n'


def _body_reader(upstream: socket.socket, rest: bytes):
    """The body bytes already read with the head, then the rest until EOF."""
    if rest:
        yield rest
    while True:
        try:
            chunk = upstream.recv(1 << 20)
        except OSError:
            return
        if not chunk:
            return
        yield chunk


def _rewrite_length(head: bytes, extra: int) -> bytes:
    lines = head[:-4].split(b'\r\n')
    for i, line in enumerate(lines):
        if line.lower().startswith(b'content-length:'):
            lines[i] = b'Content-Length: ' + str(int(line.split(b':')[1]) + extra).encode()
    return b'\r\n'.join(lines) + b'\r\n\r\n'


def _shift_range(head: bytes) -> tuple[bytes, int]:
    """A 206 whose Content-Range starts one byte later than asked; the body
    skips that byte, so the bytes match the (wrong) range."""
    lines = head[:-4].split(b'\r\n')
    for i, line in enumerate(lines):
        match = _CONTENT_RANGE.search(line)
        if line.lower().startswith(b'content-range:') and match:
            start, end, total = match.groups()
            lines[i] = b'Content-Range: bytes %d-%s/%s' % (int(start) + 1, end, total)
        elif line.lower().startswith(b'content-length:'):
            lines[i] = b'Content-Length: ' + str(int(line.split(b':')[1]) - 1).encode()
    return b'\r\n'.join(lines) + b'\r\n\r\n', 1
