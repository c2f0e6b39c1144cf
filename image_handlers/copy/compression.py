"""CompressedSource: a gzip or zstd location, decompressed while it streams.

Where it sits: a wrapper around any Source (HttpSource, or anything ranged). It
yields decompressed bytes, so the engine's offsets, checkpoints, hash, signature
and sparse writer all see the image, never the compressed file: the image's hash
is checked on the decompressed bytes and zero runs still become holes, with no
change to those stages.

Resume: a compressed stream can only be entered at the start of a frame (zstd)
or member (gzip). While streaming, the wrapper notes every frame boundary as a
pair (decompressed offset, compressed offset); the engine asks it for the last
boundary at or before each checkpoint (``position``) and stores that pair in the
checkpoint. A resumed copy (the next retry, or a new process after kill -9)
fetches the compressed file from that boundary and decompresses, discarding the
bytes below the checkpoint: what is fetched again is bounded by one frame. So a
resumable compressed image is multi-frame zstd (or multi-member gzip, equally
standard): tools/compress_image.py writes zstd frames of a chosen size (8 MiB by
default). A single-frame stream (plain ``gzip`` or ``zstd`` output) still
resumes without rewriting the partial, but by decompressing from byte 0.

The seek table of zstd's seekable format (which compress_image.py writes, as a
skippable frame that any zstd reader ignores) is not read: a sequential resume
only needs the boundary the stream itself passed, which costs no extra request
and works for any multi-frame file. A checkpoint made from another location
carries no usable boundary; that copy decompresses from 0 up to the offset.

What says a location is compressed: location metadata ``{"compression": "zstd"}``
(or gzip), or the server's ``Content-Encoding`` (a server that answers a plain
GET of a .gz file with ``Content-Encoding: gzip``). Ranges and Content-Length
are then in the encoded space, which is where this wrapper asks for them. The
two must agree when both are given. Declared compression the bytes do not match
is refused with the reason (CompressedDataError). Undeclared compressed bytes are
not decompressed: they are copied as they are, a warning names the format the
first bytes look like, and the hash check then fails (nothing is published).

Codecs: pyzstd (the zstd binding CPython 3.14 adopted) because its decompressor
bounds the output of each call (``max_length``): a small frame of zeros can
expand a thousandfold, and the engine's buffers must not; isal's zlib for gzip
(about twice zlib's inflate speed), the stdlib zlib when isal is missing.
"""
from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from oslo_log import log as logging

from image_handlers import exceptions
from image_handlers.copy.source import Source, Stream, abort_stream

try:
    from isal import isal_zlib as _zlib
    _ZLIB_ERROR: tuple[type[BaseException], ...] = (_zlib.error,)
except ImportError:         # isal is an accelerator, zlib is always there
    import zlib as _zlib
    _ZLIB_ERROR = (_zlib.error,)

LOG = logging.getLogger(__name__)

ZSTD = 'zstd'
GZIP = 'gzip'
CODECS = (ZSTD, GZIP)
METADATA_KEY = 'compression'
_ALIASES = {'zstd': ZSTD, 'zstandard': ZSTD, 'gzip': GZIP, 'x-gzip': GZIP}
_NONE = frozenset({'', 'none', 'identity'})

READ_SIZE = 256 << 10       # compressed bytes per read from the inner stream
SKIP_STEP = 1 << 20         # decompressed bytes discarded per step when resuming
# Decompressed bytes per decode call: each is a new bytes object copied into the
# engine's buffer; small ones stay in the CPU caches (measured once: 0.45 s
# against 0.57 s of user CPU per 256 MiB of libraries, 256 KiB vs 8 MiB calls).
DECODE_STEP = 256 << 10
_GZIP_WBITS = 16 + 15       # gzip header and trailer, 32 KiB window

_ZSTD_MAGIC = b'\x28\xb5\x2f\xfd'
_MAGICS = (                  # what the first bytes of a stream look like
    (_ZSTD_MAGIC, 'zstd'), (b'\x1f\x8b', 'gzip'), (b'\xfd7zXZ\x00', 'xz'),
    (b'BZh', 'bzip2'), (b'QFI\xfb', 'qcow2'), (b'PK\x03\x04', 'zip'),
)


class CompressedDataError(exceptions.SourceError):
    """The compressed bytes are corrupt, end inside a frame, or are not in the
    declared format. Not retried: the same bytes would fail the same way. The
    decompressed bytes before the bad frame are kept (another location of the
    image can resume from them; the hash over every byte decides)."""


def codec_name(value: Any, what: str) -> str | None:
    """The codec ``value`` names (None: not compressed); BadInput otherwise."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise exceptions.InvalidLocation(
            f'{what} {value!r} is not a string: use one of {", ".join(CODECS)}')
    name = value.strip().lower()
    if name in _NONE:
        return None
    if name not in _ALIASES:
        raise exceptions.InvalidLocation(
            f'{what} {value!r} is not supported: use one of {", ".join(CODECS)}, or '
            f'remove it if the bytes are not compressed')
    return _ALIASES[name]


def declared(metadata: Mapping[str, Any] | None) -> str | None:
    """The compression a location's metadata declares (``compression``)."""
    return codec_name((metadata or {}).get(METADATA_KEY),
                      f'location metadata {METADATA_KEY!r}')


def missing_library(codec: str | None) -> str | None:
    """Why ``codec`` cannot be decoded on this host (its library is missing)."""
    if codec != ZSTD:
        return None         # gzip: zlib is always there
    try:
        import pyzstd
    except ImportError:
        return ('decoding zstd needs the pyzstd package, not installed in this '
                'Python environment: install it (requirements.txt lists it)')
    del pyzstd              # only asked whether it imports
    return None


def looks_like(data: bytes) -> str:
    """A name for what ``data`` (the first bytes of a stream) looks like."""
    if _is_skippable(data):
        return 'zstd (a skippable frame)'
    for magic, name in _MAGICS:
        if data.startswith(magic):
            return name
    return 'not compressed' if data else 'empty'


def _is_skippable(data: bytes) -> bool:
    # zstd skippable frames: magic 0x184D2A50..0x184D2A5F, little-endian.
    return len(data) >= 4 and data[1:4] == b'\x2a\x4d\x18' and data[0] & 0xF0 == 0x50


def _frame_start_ok(codec: str, data: bytes) -> bool:
    if codec == ZSTD:
        return data.startswith(_ZSTD_MAGIC) or _is_skippable(data)
    return data.startswith(b'\x1f\x8b')


# -- one frame (zstd) or member (gzip) at a time -----------------------------

class _Decoder(Protocol):
    eof: bool

    def decode(self, data: bytes, limit: int) -> bytes: ...
    def needs_input(self) -> bool: ...
    def unused(self) -> bytes: ...


class _ZstdFrame:
    def __init__(self) -> None:
        import pyzstd       # only a compressed copy needs it
        self._d = pyzstd.ZstdDecompressor()
        self._error = pyzstd.ZstdError

    @property
    def eof(self) -> bool:
        return self._d.eof

    def decode(self, data: bytes, limit: int) -> bytes:
        try:
            return self._d.decompress(data, limit)
        except self._error as exc:
            raise _Corrupt(str(exc)) from exc

    def needs_input(self) -> bool:
        return self._d.needs_input

    def unused(self) -> bytes:
        return self._d.unused_data


class _GzipMember:
    def __init__(self) -> None:
        self._d = _zlib.decompressobj(_GZIP_WBITS)
        self._tail = b''
        self._short = True

    @property
    def eof(self) -> bool:
        return self._d.eof

    def decode(self, data: bytes, limit: int) -> bytes:
        data = self._tail + data if self._tail else data
        try:
            out = self._d.decompress(data, limit)
        except _ZLIB_ERROR as exc:
            raise _Corrupt(str(exc)) from exc
        # At the end of a member zlib leaves the rest in unused_data (and stdlib
        # zlib a copy of it in unconsumed_tail): only unused_data counts then.
        self._tail = b'' if self._d.eof else self._d.unconsumed_tail
        self._short = len(out) < limit
        return out

    def needs_input(self) -> bool:
        return not self._tail and self._short

    def unused(self) -> bytes:
        return self._d.unused_data


_DECODERS = {ZSTD: _ZstdFrame, GZIP: _GzipMember}


class _Corrupt(Exception):
    """A codec's own error, turned into CompressedDataError with the offsets."""


# -- the source --------------------------------------------------------------

class CompressedSource:
    """``inner`` read through a decompressor: ``compression`` declared (location
    metadata), or None to decode only what the server's Content-Encoding names."""

    def __init__(self, inner: Source, compression: str | None = None,
                 read_size: int = READ_SIZE) -> None:
        self.inner = inner
        self.declared = codec_name(compression, 'compression')
        why = missing_library(self.declared)
        if why:
            raise exceptions.ConfigError(f'{inner.description}: {why}')
        self.read_size = read_size
        self.description = inner.description + (
            f' ({self.declared})' if self.declared else '')
        self.codec: str | None = self.declared     # of the last stream opened
        self.compressed_bytes_read = 0
        self._lock = threading.Lock()
        self._boundaries: list[tuple[int, int]] = [(0, 0)]
        if hasattr(inner, 'content_encodings'):
            inner.content_encodings = frozenset(CODECS)     # decoded here

    # -- what the engine asks of a source ------------------------------------

    def identity(self) -> dict[str, Any]:
        identity = dict(self.inner.identity())
        if self.codec is not None:
            identity[METADATA_KEY] = self.codec
        return identity

    def expect(self, identity: Mapping[str, Any]) -> None:
        expect = getattr(self.inner, 'expect', None)
        if expect is not None:
            expect(identity)

    def apply_timeouts(self, connect_timeout: float, read_timeout: float) -> None:
        apply = getattr(self.inner, 'apply_timeouts', None)
        if apply is not None:
            apply(connect_timeout, read_timeout)

    def position(self, offset: int) -> dict[str, Any] | None:
        """Where a copy resumed at ``offset`` enters the compressed file: the last
        frame boundary at or before it (recorded in the checkpoint)."""
        with self._lock:
            if self.codec is None:
                return None
            done, compressed = self._boundary(offset)
        if not done:
            return None
        return {'codec': self.codec, 'offset': done, 'compressed_offset': compressed}

    def resume_at(self, position: Mapping[str, Any]) -> None:
        """Take a boundary from a checkpoint of this same source (``position``)."""
        done, compressed = position.get('offset'), position.get('compressed_offset')
        codec = position.get('codec')
        if (not isinstance(done, int) or not isinstance(compressed, int)
                or done <= 0 or compressed <= 0 or codec not in CODECS
                or (self.declared and codec != self.declared)):
            LOG.info('%s: ignoring the checkpoint\'s compressed position %r; '
                     'decompressing from byte 0 up to the resume offset instead',
                     self.description, dict(position))
            return
        with self._lock:
            self.codec = codec
            self._add((done, compressed))

    def open(self, offset: int) -> Stream:
        with self._lock:
            done, compressed = self._boundary(offset)
        stream = self.inner.open(compressed)
        try:
            codec = self._codec_for(stream)
            if codec is None:
                if compressed != offset:     # a boundary of a stream now plain
                    stream.close()
                    stream = self.inner.open(offset)
                return _SniffStream(stream, self.description)
            if stream.start != compressed:
                if stream.start != 0:
                    raise exceptions.SourceError(
                        f'{self.description}: asked for compressed byte {compressed}, '
                        f'got data from byte {stream.start}')
                # The server sent the whole file (Range ignored, or If-Range saw
                # a changed object): the copy starts over, as for a plain source.
                with self._lock:
                    self._boundaries = [(0, 0)]
                return _DecompressingStream(self, stream, codec, 0, 0, 0)
            if done == 0:
                with self._lock:
                    self._boundaries = [(0, 0)]     # forget another object's frames
            if offset > done:
                LOG.info('%s: resuming at byte %d from the %s frame at compressed '
                         'byte %d (byte %d decompressed): %d bytes are decompressed '
                         'again and discarded', self.description, offset, codec,
                         compressed, done, offset - done)
            return _DecompressingStream(self, stream, codec, offset, done, compressed)
        except BaseException:
            stream.close()
            raise

    # -- helpers ---------------------------------------------------------

    def _codec_for(self, stream: Stream) -> str | None:
        """Declared compression and Content-Encoding must name the same codec."""
        encoding = getattr(stream, 'content_encoding', None) or 'identity'
        sent = codec_name(encoding, 'Content-Encoding')
        if self.declared and sent and sent != self.declared:
            raise CompressedDataError(
                f'{self.description}: the location metadata declares '
                f'{METADATA_KEY}={self.declared} but the server sends '
                f'Content-Encoding {encoding}: fix the metadata or the server')
        codec = self.declared or sent
        why = missing_library(codec)
        if why:
            raise exceptions.SourceError(
                f'{self.description}: the server sends Content-Encoding {encoding}; '
                f'{why}')
        with self._lock:
            self.codec = codec
        return codec

    def _boundary(self, offset: int) -> tuple[int, int]:
        i = bisect.bisect_right(self._boundaries, (offset, float('inf'))) - 1
        return self._boundaries[max(i, 0)]

    def _add(self, boundary: tuple[int, int]) -> None:
        if boundary not in self._boundaries:
            bisect.insort(self._boundaries, boundary)

    def _frame_done(self, boundary: tuple[int, int]) -> None:
        with self._lock:
            self._add(boundary)

    def _fetched(self, n: int) -> None:
        with self._lock:
            self.compressed_bytes_read += n


class _DecompressingStream:
    """One read of the compressed file from a frame boundary; ``start`` is the
    decompressed offset the engine asked for (bytes before it are discarded)."""

    def __init__(self, source: CompressedSource, inner: Stream, codec: str,
                 start: int, done: int, compressed: int) -> None:
        self.start = start
        self.total: int | None = None       # the decompressed size is not known
        self._source = source
        self._inner = inner
        self._codec = codec
        self._first_frame_at = compressed
        self._out = done                    # decompressed bytes produced so far
        self._skip = start - done
        self._in = compressed               # compressed bytes taken from inner
        self._frame_at = compressed         # where the current frame starts
        self._frame_fed = False             # the current frame got input
        self._pending = b''                 # input for the next decode call
        self._decoder: _Decoder = _DECODERS[codec]()
        self._buf = bytearray(source.read_size)
        self._eof = False

    def readinto(self, buf: memoryview) -> int:
        while True:
            limit = min(self._skip, SKIP_STEP) if self._skip else min(len(buf),
                                                                      DECODE_STEP)
            if not limit:
                return 0
            if self._decoder.eof:
                self._next_frame()
            out = self._decode(limit)
            if out:
                self._out += len(out)
                if self._skip:
                    self._skip -= len(out)
                    continue
                buf[:len(out)] = out
                return len(out)
            if (not self._decoder.eof and self._decoder.needs_input()
                    and not self._read_more()):
                return self._end()

    def abort(self) -> None:
        abort_stream(self._inner)

    def close(self) -> None:
        self._inner.close()

    # -- steps -----------------------------------------------------------

    def _decode(self, limit: int) -> bytes:
        data, self._pending = self._pending, b''
        if not self._frame_fed:
            if not data:
                return b''
            if not _frame_start_ok(self._codec, data[:4]):
                if len(data) < 4 and not self._eof:
                    self._pending = data        # the magic needs 4 bytes
                    return b''
                raise self._not_a_frame(data)
            self._frame_fed = True
        try:
            return self._decoder.decode(data, limit)
        except _Corrupt as exc:
            raise CompressedDataError(
                f'{self._source.description}: corrupt {self._codec} data in the '
                f'frame at compressed byte {self._frame_at} (decompressed byte '
                f'{self._out}): {exc}; the bytes before it are kept, nothing was '
                f'published: replace the file or use another location') from None

    def _next_frame(self) -> None:
        unused = self._decoder.unused()
        end = self._in - len(unused)
        self._source._frame_done((self._out, end))
        self._decoder = _DECODERS[self._codec]()
        self._frame_at, self._frame_fed, self._pending = end, False, unused

    def _read_more(self) -> bool:
        if self._eof:
            return False
        view = memoryview(self._buf)
        n = self._inner.readinto(view)
        if not n:
            self._eof = True
            return False
        self._in += n
        self._source._fetched(n)
        self._pending += bytes(view[:n])
        return True

    def _end(self) -> int:
        """The compressed file ended: fine between frames, not inside one."""
        if self._pending and not self._frame_fed:
            raise self._not_a_frame(self._pending)
        if self._frame_fed or self._pending:
            raise CompressedDataError(
                f'{self._source.description}: the {self._codec} data ends inside the '
                f'frame at compressed byte {self._frame_at} (after {self._in} bytes, '
                f'decompressed byte {self._out}): the file is truncated; the bytes '
                f'before that frame are kept, nothing was published: replace the '
                f'file or use another location')
        if self._skip:
            raise CompressedDataError(
                f'{self._source.description}: the decompressed image ends at byte '
                f'{self._out}, before byte {self.start} where this copy resumes: the '
                f'file is not the one the partial copy came from')
        return 0

    def _not_a_frame(self, data: bytes) -> CompressedDataError:
        source = self._source
        if self._frame_at == self._first_frame_at:
            how = (f'the location metadata declares {METADATA_KEY}={source.declared}'
                   if source.declared else f'the server sends Content-Encoding '
                   f'{self._codec}')
            return CompressedDataError(
                f'{source.description}: {how}, but the bytes at compressed byte '
                f'{self._frame_at} are not {self._codec} (they look {looks_like(data)})'
                f': set the location metadata {METADATA_KEY!r} to what the file is, '
                f'or remove it for an uncompressed file')
        return CompressedDataError(
            f'{source.description}: the bytes after the {self._codec} frame ending at '
            f'compressed byte {self._frame_at} are not a {self._codec} frame (they '
            f'look {looks_like(data)}): the file is corrupt or has trailing data; '
            f'nothing was published')


class _SniffStream:
    """A plain stream, passed through; warns when an undeclared stream starts
    with a compressed format's magic (the hash check will then fail)."""

    def __init__(self, inner: Stream, description: str) -> None:
        self._inner = inner
        self._description = description
        self._sniff = inner.start == 0
        self.start = inner.start
        self.total = inner.total

    def readinto(self, buf: memoryview) -> int:
        n = self._inner.readinto(buf)
        if self._sniff and n:
            self._sniff = False
            kind = looks_like(bytes(buf[:min(n, 8)]))
            if kind not in ('not compressed', 'qcow2'):
                LOG.warning('%s: the data starts like %s, but no compression is '
                            'declared: it is copied as it is (the hash check will '
                            'fail if the image is the decompressed data); set the '
                            'location metadata %r to %s if it is compressed',
                            self._description, kind, METADATA_KEY,
                            kind.split()[0])
        return n

    def abort(self) -> None:
        abort_stream(self._inner)

    def close(self) -> None:
        self._inner.close()


def wrap(source: Source, metadata: Mapping[str, Any] | None) -> CompressedSource:
    """``source`` of a location with ``metadata``: decompressed when declared or
    when its server says Content-Encoding gzip/zstd, passed through otherwise."""
    return CompressedSource(source, declared(metadata))
