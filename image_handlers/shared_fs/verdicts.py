""""This file was verified against this hash": hash a shared image file once per host.

Hashing a 10 GiB image costs what a zero-copy handler exists to avoid, every
boot. A verdict records that the file with identity (st_dev, st_ino, size,
mtime_ns, ctime_ns) hashed to the image's ``algo:hexdigest`` (and, for a signed
image on a host that checks signatures, carried its signature: the verdict's
``checksum`` is then the Expectation's key, hash and signature together); a later
boot whose file has the same identity reuses it. Any change in place -- a write (mtime,
ctime), a truncate (size), a replacement (inode), even ``touch -d`` to restore
the mtime (ctime) -- misses, and the file is hashed again. NFS and GlusterFS can
give a share another st_dev after a remount: a miss too, in the safe direction.

Note that link(2) and chmod(2) change an inode's ctime: pin or link the file
*before* verifying it, or the verdict is missed once after.

A verdict is not reused when the file had changed less than ``racy_seconds``
before it was recorded (git's "racy clean" problem): on kernels with coarse
timestamps a write in the same clock tick after the hash leaves mtime and ctime
as they were. The price is one more hash for an image booted right after upload.

Verdicts live in ``<state_dir>/verdicts/<image_id>.json`` (host-local, mode 0600,
written by tmp + fsync + rename, sealed with the host's verdict key:
trust.verdicts). A file that does not parse or unseal (edited by hand), or that
another user could have written, is ignored with a warning: the image is
verified again.
"""
from __future__ import annotations

import dataclasses
import os
import stat
import time

from oslo_log import log as logging

from image_handlers import exceptions
from image_handlers.copy.cancel import CancelToken
from image_handlers.copy.checksum import Checksum
from image_handlers.shared_fs.errors import Refused
from image_handlers.statefile import file_name_of
from image_handlers.shared_fs.paths import identity_of
from image_handlers.trust.digest import DigestPass, feed_fd
from image_handlers.trust import verdicts as sealed
from image_handlers.trust.expectation import Expectation

LOG = logging.getLogger(__name__)

Identity = tuple[int, int, int, int, int]   # st_dev, st_ino, size, mtime_ns, ctime_ns
FORMAT_VERSION = 1
MAX_VERDICTS = 8            # per image: one per file (share) it was verified on
RACY_SECONDS = 2.0
HASH_BUFFER = 16 << 20      # large preads: hashing runs at hash speed, not syscall speed
_FIELDS = ('st_dev', 'st_ino', 'size', 'mtime_ns', 'ctime_ns')


@dataclasses.dataclass(frozen=True)
class Verdict:
    image_id: str
    checksum: str           # what was proven: 'algo:hexdigest' (Expectation.key)
    st_dev: int
    st_ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    verified_at: float      # time.time() of the hash
    # The last ctime move was our own link(2)/chmod(2) of a verified file (carried
    # over by ``carry_over``): the racy rule then looks at mtime only.
    ctime_ours: bool = False

    def identity(self) -> Identity:
        return (self.st_dev, self.st_ino, self.size, self.mtime_ns, self.ctime_ns)

    @classmethod
    def from_json(cls, image_id: str, entry) -> 'Verdict':
        """Strict: anything but the exact types is a ValueError."""
        if not isinstance(entry, dict):
            raise ValueError('a verdict is not an object')
        ints = {}
        for name in _FIELDS:
            value = entry.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f'{name} is {value!r}')
            ints[name] = value
        checksum = entry.get('checksum')
        if not isinstance(checksum, str):
            raise ValueError(f'checksum is {checksum!r}')
        checksum = _claim(checksum)
        verified_at = entry.get('verified_at', 0)
        if not isinstance(verified_at, (int, float)) or isinstance(verified_at, bool):
            raise ValueError(f'verified_at is {verified_at!r}')
        ctime_ours = entry.get('ctime_ours', False)
        if not isinstance(ctime_ours, bool):
            raise ValueError(f'ctime_ours is {ctime_ours!r}')
        return cls(image_id=image_id, checksum=checksum, verified_at=float(verified_at),
                   ctime_ours=ctime_ours, **ints)

    def to_json(self) -> dict:
        entry = dataclasses.asdict(self)
        del entry['image_id']
        return entry


class VerdictStore:
    """Verdicts of one host, in ``<state_dir>/verdicts``."""

    def __init__(self, state_dir: str | os.PathLike,
                 racy_seconds: float = RACY_SECONDS) -> None:
        self.state_dir = os.path.abspath(os.fspath(state_dir))
        self.directory = os.path.join(self.state_dir, 'verdicts')
        self.racy_seconds = racy_seconds

    def path(self, image_id: str) -> str:
        name = file_name_of(image_id, 'a state file')
        return os.path.join(self.directory, f'{name}.json')

    def lookup(self, image_id: str, expected: Checksum | str,
               identity: Identity) -> Verdict | None:
        """The verdict for this image, hash and file identity, or None (verify)."""
        expected = _claim(expected)
        for verdict in self._load(image_id):
            if verdict.checksum != expected:
                continue
            if verdict.identity() == tuple(identity):
                changed = (verdict.mtime_ns if verdict.ctime_ours else
                           max(verdict.mtime_ns, verdict.ctime_ns)) / 1e9
                if verdict.verified_at - changed >= self.racy_seconds:
                    return verdict
                LOG.info('image %s: the file had changed %.3fs before it was '
                         'verified, too recently to trust its timestamps: verifying '
                         'it again', image_id, verdict.verified_at - changed)
                continue
            if (verdict.st_dev, verdict.st_ino) == tuple(identity)[:2]:
                LOG.info('image %s: %s changed in place since it was verified '
                         '(%s): verifying it again', image_id, self.path(image_id),
                         _difference(verdict.identity(), identity))
        return None

    def record(self, image_id: str, checksum: 'Expectation | Checksum | str',
               identity: Identity, ctime_ours: bool = False) -> Verdict:
        """Record that the file with ``identity`` met ``checksum`` (a checksum or
        an Expectation); ``ctime_ours``: its last ctime move was our own
        link/chmod (see Verdict)."""
        checksum = _claim(checksum)
        dev, ino, size, mtime_ns, ctime_ns = (int(v) for v in identity)
        verdict = Verdict(image_id=file_name_of(image_id, 'a state file'),
                          checksum=checksum,
                          st_dev=dev, st_ino=ino, size=size, mtime_ns=mtime_ns,
                          ctime_ns=ctime_ns, verified_at=time.time(),
                          ctime_ours=ctime_ours)
        kept = [v for v in self._load(image_id)
                if (v.st_dev, v.st_ino) != (dev, ino)]
        entries = [verdict, *kept][:MAX_VERDICTS]
        self._write(image_id, {'version': FORMAT_VERSION, 'image_id': image_id,
                               'verdicts': [v.to_json() for v in entries]})
        return verdict

    def carry_over(self, image_id: str, verdict: Verdict, now: Identity) -> Verdict | None:
        """After our own link(2) or chmod(2) of a file with a valid ``verdict``:
        record it for the file's new identity when only ctime moved. Safe because a
        content write after it would move mtime too, and mtime is old (the verdict
        was valid, so not racy). None when anything else changed."""
        if tuple(now)[:4] != verdict.identity()[:4]:
            return None
        if tuple(now) == verdict.identity():
            return verdict                  # nothing moved (a pin reused): no write
        carried = dataclasses.replace(verdict, ctime_ns=int(now[4]), ctime_ours=True)
        kept = [v for v in self._load(image_id)
                if (v.st_dev, v.st_ino) != (verdict.st_dev, verdict.st_ino)]
        entries = [carried, *kept][:MAX_VERDICTS]
        self._write(image_id, {'version': FORMAT_VERSION, 'image_id': image_id,
                               'verdicts': [v.to_json() for v in entries]})
        return carried

    def forget(self, image_id: str) -> None:
        try:
            os.unlink(self.path(image_id))
        except FileNotFoundError:
            pass

    def _load(self, image_id: str) -> list[Verdict]:
        path = self.path(image_id)
        try:
            doc = sealed.read_sealed(path, self.state_dir)
            if doc is None:
                return []
            if doc.get('version') != FORMAT_VERSION:
                raise ValueError(f'not a version {FORMAT_VERSION} verdict file')
            if doc.get('image_id') != image_id:
                raise ValueError(f'it is about image {doc.get("image_id")!r}')
            entries = doc.get('verdicts')
            if not isinstance(entries, list):
                raise ValueError('"verdicts" is not a list')
            return [Verdict.from_json(image_id, e) for e in entries]
        except (ValueError, TypeError) as exc:
            return self._ignore(path, image_id, str(exc))

    @staticmethod
    def _ignore(path: str, image_id: str, why: str) -> list[Verdict]:
        LOG.warning('ignoring verdict file %s (%s): image %s will be verified again',
                    path, why, image_id)
        return []

    def _write(self, image_id: str, doc: dict) -> None:
        sealed.write_sealed(self.path(image_id), doc, self.state_dir)


def _claim(expected: 'Expectation | Checksum | str') -> str:
    """The string a verdict proves: an Expectation's key, or a checksum's
    ``algo:hexdigest`` (normalised); ValueError when it is neither."""
    if isinstance(expected, Expectation):
        return expected.key
    if isinstance(expected, Checksum):
        return str(expected)
    first, sep, rest = str(expected).partition('|')
    try:
        checksum = 'no-hash' if first == 'no-hash' and sep else str(Checksum.parse(first))
    except exceptions.BadInput as exc:
        raise ValueError(str(exc)) from None
    if sep and not rest.startswith('sig:'):
        raise ValueError(f'{expected!r} is neither a checksum nor a verdict key')
    return checksum + sep + rest


def _expectation(expected: 'Expectation | Checksum | str',
                 description: str) -> Expectation:
    if isinstance(expected, Expectation):
        return expected
    try:
        checksum = expected if isinstance(expected, Checksum) else Checksum.parse(expected)
    except exceptions.BadInput as exc:
        raise Refused(f'{description}: cannot verify: {exc}') from None
    return Expectation(image_id=description, checksum=checksum)


def _difference(old: Identity, new: Identity) -> str:
    return ', '.join(f'{n} {a} -> {b}' for n, a, b in zip(_FIELDS, old, new) if a != b)


def verify_file(fd: int, size: int, checksum: 'Expectation | Checksum | str',
                cancel: CancelToken | None = None, description: str | None = None,
                buffer_size: int = HASH_BUFFER) -> Identity:
    """Read the open file once (pread: its offset is untouched), proving the
    Expectation (or checksum): hash and signature in the same pass; return the
    identity it had throughout. Refused when its size is not ``size``, it does
    not hash to the image's hash or carry its signature, it cannot be read, or it
    changed while read. CopyCancelled when ``cancel`` is set meanwhile."""
    description = description or f'fd {fd}'
    expected = _expectation(checksum, description)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise Refused(f'{description} is not a regular file')
        if before.st_size != size:
            raise Refused(f'{description} has {before.st_size} bytes, the image {size}')
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass
        digests = DigestPass(expected)
        _read_all(fd, size, digests, min(buffer_size, 8 << 20),
                  cancel or CancelToken(), description)
        after = os.fstat(fd)
    except OSError as exc:
        raise Refused(f'{description} cannot be read to verify it: '
                      f'{exc.strerror or exc}') from exc
    if identity_of(after) != identity_of(before):
        raise Refused(f'{description} changed while it was hashed '
                      f'({_difference(identity_of(before), identity_of(after))}): '
                      f'something writes the image file')
    try:
        digests.finish(description)
    except exceptions.ChecksumMismatch as exc:
        raise Refused(str(exc)) from None
    return identity_of(before)


def _read_all(fd: int, size: int, digests: DigestPass, buffer_size: int,
              cancel: CancelToken, description: str) -> None:
    """The whole file into the digests, reads and hashing overlapped."""
    got = feed_fd(fd, size, digests, cancel, description, buffer_size)
    if got != size:
        raise OSError(f'file ended at byte {got} of {size}')


def verified(store: VerdictStore, fd: int, image_id: str, size: int,
             checksum: 'Expectation | Checksum | str', cancel: CancelToken | None = None,
             description: str | None = None,
             ctime_ours: bool = False) -> tuple[Verdict, bool]:
    """(verdict, reused): the recorded verdict for the file as it is now, or a
    fresh verification recorded (``ctime_ours``: the caller just linked or
    chmod'ed it). Refused as verify_file."""
    expected = _expectation(checksum, f'image {image_id}')
    found = store.lookup(image_id, expected, identity_of(os.fstat(fd)))
    if found is not None:
        return found, True
    identity = verify_file(fd, size, expected, cancel, description)
    return store.record(image_id, expected, identity, ctime_ours), False
