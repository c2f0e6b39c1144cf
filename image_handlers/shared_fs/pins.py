"""Pins: hard links of our own that keep a Glance image file's inode alive.

A qcow2 overlay names its backing file by path. Glance's path is not ours to
depend on: an image delete (or a store clean-up) unlinks it and every overlay
on it breaks. So an overlay's backing file is a pin, ``<pin_dir>/<image_id>.<st_ino>``,
a hard link to the same inode in a directory we own on the same file system
(and the same mount: link(2) never crosses mounts). The name carries the inode
so a re-uploaded image (a new inode) gets a new pin while disks on the old
data keep theirs; an existing pin is reused only when it is that inode.

Each pin's users (disk paths) are recorded in ``<state_dir>/pins/<name>.json``;
``release_unused`` removes a pin only when none of its recorded users exists any
more (and the caller's ``still_needed`` does not object). A pin with no record
is never removed: its users are unknown.

The state dir is per host, so the pin dir must be too: host A would otherwise
release a pin host B's disks use. A pin dir on a shared volume therefore records
its host (``.image_handlers_pins_host``) and refuses another.

Pinning and recording a user happen under one file lock, held by the caller
across "pin, make the overlay, add the user" (``with store.locked():``), so
``release_unused`` never sees a pin between its creation and its first user.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator

from oslo_log import log as logging

from image_handlers import statefile
from image_handlers.copy import fsutil
from image_handlers.shared_fs import mounts
from image_handlers.shared_fs.errors import PinError
from image_handlers.statefile import file_name_of
from image_handlers.shared_fs.paths import SourceFile

LOG = logging.getLogger(__name__)

FORMAT_VERSION = 1
HOST_FILE = '.image_handlers_pins_host'
OWNER_FILE = '.pin_dir'         # in <state_dir>/pins: the one pin dir it describes
LOCK_FILE = '.lock'


@dataclasses.dataclass(frozen=True)
class Pin:
    name: str           # '<image_id>.<st_ino>'
    path: str
    image_id: str
    st_dev: int
    st_ino: int
    size: int


def make_read_only(fd: int, description: str = 'the image file') -> bool:
    """Clear the write bits of the open file's inode -- Glance's file and every
    link to it, since they are one inode -- so no path can change a base file
    disks depend on. False (and a warning) when we may not (not the owner).
    Note that this changes the inode's ctime (see verdicts)."""
    st = os.fstat(fd)
    if not st.st_mode & 0o222:
        return True
    try:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o222)
    except OSError as exc:
        LOG.warning('%s cannot be made read-only (%s; owned by uid %d): a write '
                    'through any of its links would change the data of the disks '
                    'based on it', description, exc.strerror, st.st_uid)
        return False
    return True


class _ProcessLock:
    """An flock on a lock file, reentrant within this process.

    Why flock: oslo.concurrency is not a dependency of this package, and flock
    is what its external locks use anyway: released by the kernel when the
    holder dies (no stale lock to clean up after a crash), exclusive between
    processes. Two open() of one file conflict even inside one process, so one
    object per lock path (``_lock_for``) with a thread lock and a depth count
    makes nested ``with store.locked():`` work in one thread and serializes threads.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd = -1

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self.rlock:
            if self.depth == 0:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self.fd = fd
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
                if self.depth == 0:
                    os.close(self.fd)       # releases the flock
                    self.fd = -1


_registry_lock = threading.Lock()
_locks: dict[str, _ProcessLock] = {}


def _lock_for(path: str) -> _ProcessLock:
    with _registry_lock:
        return _locks.setdefault(path, _ProcessLock(path))


class PinStore:
    """The pins of one pin dir (on a shared volume), recorded in one host's state dir."""

    def __init__(self, pin_dir: str | os.PathLike, state_dir: str | os.PathLike,
                 host: str | None = None) -> None:
        self.pin_dir = os.path.abspath(os.fspath(pin_dir))
        self.state = os.path.join(os.path.abspath(os.fspath(state_dir)), 'pins')
        self.host = host or socket.gethostname()

    # -- locking ------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the pin lock (reentrant): around pin, overlay creation, add_user."""
        try:
            os.makedirs(self.state, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise PinError(f'cannot create the pin state directory {self.state}: '
                           f'{exc.strerror}: make the state dir writable') from exc
        with _lock_for(os.path.join(self.state, LOCK_FILE)).held():
            yield

    # -- pins ---------------------------------------------------------------------
    def pin(self, source: SourceFile, image_id: str) -> Pin:
        """A pin of ``source``'s inode: the existing one of this inode, or a new
        hard link. The inode is made read-only when we may (``make_read_only``)."""
        name = f'{file_name_of(image_id, "a pin")}.{source.st_ino}'
        path = os.path.join(self.pin_dir, name)
        with self.locked():
            self._claim_state_dir()
            self._prepare_pin_dir(source)
            existing = _lstat(path)
            if existing is None:
                self._link(source, path)
                LOG.info('image %s: pinned %s as %s', image_id, source.path, path)
            elif not (stat.S_ISREG(existing.st_mode)
                      and (existing.st_dev, existing.st_ino)
                      == (source.st_dev, source.st_ino)):
                raise PinError(
                    f'{path} exists but is not a link of {source.path} (inode '
                    f'{source.st_ino}); it was left untouched: remove it by hand if '
                    f'no disk uses it as its backing file')
            make_read_only(source.fd, source.path)
            pin = Pin(name=name, path=path, image_id=image_id, st_dev=source.st_dev,
                      st_ino=source.st_ino, size=source.size)
            record = self._load(name)
            if record is None:
                self._save(pin, [])
            return pin

    def add_user(self, pin: Pin, disk_path: str | os.PathLike) -> None:
        """Record that the disk at ``disk_path`` depends on ``pin``."""
        disk = os.path.abspath(os.fspath(disk_path))
        with self.locked():
            users = self._users_of(pin)
            if disk not in {u['path'] for u in users}:
                self._save(pin, [*users, {'path': disk, 'mount': _mount_point(disk)}])

    def remove_user(self, pin: Pin, disk_path: str | os.PathLike) -> None:
        """Forget one user (its disk was deleted, or never made)."""
        disk = os.path.abspath(os.fspath(disk_path))
        with self.locked():
            users = self._users_of(pin)
            if disk in {u['path'] for u in users}:
                self._save(pin, [u for u in users if u['path'] != disk])

    def users(self, pin: Pin) -> list[str]:
        """The recorded users of ``pin`` (existing or not)."""
        record = self._load(pin.name)
        return [u['path'] for u in record['users']] if record else []

    def pins(self) -> list[Pin]:
        """Every pin recorded for this pin dir."""
        return [pin for pin, _users in self._records()]

    def release_unused(self, still_needed: Callable[[Pin], bool] | None = None
                       ) -> list[Pin]:
        """Remove each pin none of whose recorded users exists any more (and
        that ``still_needed``, if given, does not claim); return them."""
        released = []
        with self.locked():
            self._claim_state_dir()
            for pin, users in self._records():
                if any(_may_exist(u['path'], u['mount']) for u in users):
                    continue
                if still_needed is not None and still_needed(pin):
                    continue
                self._unlink_pin(pin)
                try:
                    os.unlink(self._record_path(pin.name))
                except FileNotFoundError:
                    pass
                LOG.info('released pin %s (image %s): no recorded disk uses it',
                         pin.path, pin.image_id)
                released.append(pin)
            self._warn_orphans()
            if released:
                fsutil.fsync_dir(self.state)
        return released

    # -- the pin dir --------------------------------------------------------------
    def _unwritable(self, why: str) -> PinError:
        return PinError(
            f'pin directory {self.pin_dir} is not usable ({why}): create it on the '
            f'same mount as the Glance store (e.g. <mount point>/.image_handlers/'
            f'pins/{self.host}), one per host, writable by uid {os.geteuid()}; or '
            f'configure another pin directory')

    def _prepare_pin_dir(self, source: SourceFile) -> None:
        try:
            os.makedirs(self.pin_dir, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise self._unwritable(f'cannot create it: {exc.strerror}') from exc
        if not os.path.isdir(self.pin_dir):
            raise self._unwritable('not a directory')
        if fsutil.read_only(self.pin_dir):
            raise self._unwritable('read-only mount')
        if not os.access(self.pin_dir, os.W_OK | os.X_OK):
            raise self._unwritable('no write permission')
        st = os.stat(self.pin_dir)
        if st.st_dev != source.st_dev:
            raise self._unwritable(
                f'it is on another file system than {source.path} (device '
                f'{os.major(st.st_dev)}:{os.minor(st.st_dev)}, not '
                f'{os.major(source.st_dev)}:{os.minor(source.st_dev)}): a hard link '
                f'cannot cross file systems')
        host_file = os.path.join(self.pin_dir, HOST_FILE)
        try:
            owner = _claim(host_file, self.host)
            if owner != self.host:
                raise PinError(
                    f'pin directory {self.pin_dir} belongs to host {owner!r}, not '
                    f'{self.host!r}: every host records its own pins\' users and '
                    f'would release pins the other\'s disks use; give each host its '
                    f'own pin directory (e.g. .../pins/{self.host})') from None
        except OSError as exc:
            raise self._unwritable(f'cannot write {host_file}: {exc.strerror}') from exc

    def _link(self, source: SourceFile, path: str) -> None:
        # Link the inode we hold open (checked by the gate), not whatever the
        # path names now: linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N follows
        # the magic link. (Python calls linkat, not link(2), only when given a
        # dir fd: plain os.link would try to link the /proc symlink itself.)
        name = os.path.basename(path)
        by_fd = f'/proc/self/fd/{source.fd}'
        dir_fd = os.open(self.pin_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(by_fd if os.path.isdir('/proc/self/fd') else source.path, name,
                    dst_dir_fd=dir_fd, follow_symlinks=True)
        except FileExistsError:
            raise PinError(f'{path} appeared while it was pinned; it was left '
                           f'untouched: pin again') from None
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise self._unwritable(
                    f'{source.path} is on another mount of its file system (a bind '
                    f'mount?): link(2) never crosses mounts') from exc
            if exc.errno == errno.ENOENT and os.fstat(source.fd).st_nlink == 0:
                raise PinError(f'{source.path} was deleted before it could be '
                               f'pinned') from exc
            if exc.errno == errno.EPERM and not os.access(self.pin_dir, os.W_OK):
                raise self._unwritable(exc.strerror) from exc
            if exc.errno == errno.EPERM:
                raise self._unwritable(
                    f'link refused ({exc.strerror}): an immutable directory, or '
                    f'fs.protected_hardlinks forbids linking a file uid '
                    f'{os.geteuid()} does not own (the image file is uid '
                    f'{os.fstat(source.fd).st_uid}'
                    f'): run as its owner, or with CAP_FOWNER') from exc
            if fsutil.is_not_writable(exc) or exc.errno in fsutil.DISK_FULL_ERRNOS:
                raise self._unwritable(exc.strerror) from exc
            raise PinError(f'cannot pin {source.path} as {path}: {exc.strerror}') from exc
        finally:
            os.close(dir_fd)
        linked = os.lstat(path)
        if (linked.st_dev, linked.st_ino) != (source.st_dev, source.st_ino):
            os.unlink(path)
            raise PinError(f'{source.path} was replaced while it was pinned')
        fsutil.fsync_dir(self.pin_dir)

    def _unlink_pin(self, pin: Pin) -> None:
        st = _lstat(pin.path)
        if st is None:
            return
        # st_ino (and the name) identify the pin; st_dev may change on an NFS
        # remount, so the file system is the pin dir's as it is now.
        if st.st_ino == pin.st_ino and st.st_dev == os.stat(self.pin_dir).st_dev:
            os.unlink(pin.path)
            fsutil.fsync_dir(self.pin_dir)
        else:
            LOG.warning('pin %s is now another file (inode %d, not %d): left '
                        'untouched, its record dropped', pin.path, st.st_ino,
                        pin.st_ino)

    def _warn_orphans(self) -> None:
        recorded = {pin.name for pin in self.pins()}
        try:
            names = os.listdir(self.pin_dir)
        except OSError:
            return
        for name in sorted(names):
            if not name.startswith('.') and name not in recorded:
                LOG.warning('pin %s has no record in %s: kept, since the disks using '
                            'it are unknown; remove it by hand when none does',
                            os.path.join(self.pin_dir, name), self.state)

    # -- the state dir ------------------------------------------------------------
    def _claim_state_dir(self) -> None:
        """One state dir describes one pin dir: record it, refuse another."""
        recorded = _claim(os.path.join(self.state, OWNER_FILE), self.pin_dir)
        if recorded != self.pin_dir:
            raise PinError(
                f'the pin state directory {self.state} describes the pins of '
                f'{recorded}, not {self.pin_dir}: give each pin directory its '
                f'own state directory')

    def _record_path(self, name: str) -> str:
        return os.path.join(self.state, f'{name}.json')

    def _load(self, name: str) -> dict | None:
        path = self._record_path(name)
        try:
            with open(path, 'rb') as f:
                doc = json.loads(f.read())
            if (not isinstance(doc, dict) or doc.get('version') != FORMAT_VERSION
                    or doc.get('name') != name or not isinstance(doc.get('users'), list)
                    or not all(isinstance(u, dict) and isinstance(u.get('path'), str)
                               and isinstance(u.get('mount'), (str, type(None)))
                               for u in doc['users'])
                    or not isinstance(doc.get('st_ino'), int)):
                raise ValueError('not a pin record')
            return doc
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise PinError(f'pin record {path} cannot be read ({exc}): fix or remove '
                           f'it (its pin {os.path.join(self.pin_dir, name)} is kept '
                           f'meanwhile)') from exc

    def _users_of(self, pin: Pin) -> list[dict]:
        record = self._load(pin.name)
        if record is None or record.get('st_ino') != pin.st_ino:
            raise PinError(f'{pin.path} is not a pin recorded in {self.state}: pin '
                           f'the image first')
        return list(record['users'])

    def _records(self) -> list[tuple[Pin, list[dict]]]:
        try:
            names = sorted(os.listdir(self.state))
        except FileNotFoundError:
            return []
        found = []
        for entry in names:
            if entry.startswith('.') or not entry.endswith('.json'):
                continue
            try:
                doc = self._load(entry[:-len('.json')])
            except PinError as exc:
                LOG.warning('%s', exc)
                continue
            if doc is None or doc.get('pin_path') != os.path.join(self.pin_dir,
                                                                  doc['name']):
                continue
            found.append((Pin(name=doc['name'], path=doc['pin_path'],
                              image_id=doc['image_id'], st_dev=doc['st_dev'],
                              st_ino=doc['st_ino'], size=doc['size']),
                          list(doc['users'])))
        return found

    def _save(self, pin: Pin, users: list[dict]) -> None:
        doc = {'version': FORMAT_VERSION, 'name': pin.name, 'pin_path': pin.path,
               'image_id': pin.image_id, 'st_dev': pin.st_dev, 'st_ino': pin.st_ino,
               'size': pin.size, 'users': users, 'updated_at': time.time()}
        statefile.write_json(self._record_path(pin.name), doc)


def _claim(path: str, value: str) -> str:
    """Write ``value`` to a new file at ``path``, or read what an earlier claim
    wrote there: the value that holds."""
    try:
        with open(path, 'x') as f:
            f.write(value + '\n')
        return value
    except FileExistsError:
        with open(path) as f:
            return f.read().strip()


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _mount_point(path: str) -> str | None:
    """The mount point ``path`` is (or would be) on: of its nearest existing
    ancestor, since a disk may be recorded just before it is made."""
    probe = path
    while not os.path.lexists(probe) and probe != os.path.dirname(probe):
        probe = os.path.dirname(probe)
    try:
        return mounts.mount_of(probe).mount_point
    except OSError:
        return None


def _may_exist(path: str, mount: str | None) -> bool:
    """False only when ``path`` surely does not exist: absent while the mount it
    was recorded on is mounted. An unmounted share (an NFS instance dir) shows
    an empty directory, not deleted disks; other errors (permissions) keep it too."""
    try:
        os.lstat(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError:
        return True
    if mount is None or mount == '/':
        return False
    try:
        mounted = mounts.mount_of(mount).mount_point == mount
    except OSError:
        mounted = False
    if not mounted:
        LOG.warning('disk %s is absent but %s, the mount it was on, is not mounted: '
                    'its pin is kept', path, mount)
    return not mounted
