"""The security gate: from a ``file://`` location to an open image file, or a refusal.

A location is a claim made by whoever added it (OSSN-0065): ``file:///etc/shadow``,
a symlink out of the share, or the path of *another* image's file are all
accepted by Glance's API. ``resolve_source`` serves only a regular file that

- lies on a share configured on this host, chosen by the location metadata's
  ``id`` (Glance's ``filesystem_store_metadata_file``); the metadata
  ``mountpoint`` only says which prefix of the path to replace by our mount
  point (as Nova's removed ``nova/image/download/file.py`` did) and is never
  trusted alone;
- where that share is really mounted: the file ``.image_handlers_fs_id`` at our
  mount point must contain the id (no marker: the share is not mounted, or the
  mount point is a plain directory of the root file system);
- whose real path stays inside our mount point and on its file system (no
  symlink or ``..`` out, no nested mount), opened without following a final
  symlink and without blocking (a FIFO), and checked on the open descriptor,
  which ``SourceFile`` keeps: what was checked is what is read;
- named by the image id (Glance's fs store names files so) and of the image's size.

A location *without* an id (Glance configured without a metadata file) is served
only when its path, taken literally, lies under exactly one configured mount
point -- Glance and Nova mount the share at the same path -- and that mount's
marker holds its configured id. Two candidates are ambiguous and refused; the
``mountpoint`` metadata is ignored without an id.

``Refused`` is the only exception raised (``resolve_source`` is total): an
unexpected error is a refusal too, since a gate must fail closed.
"""
from __future__ import annotations

import dataclasses
import os
import stat

from oslo_log import log as logging

from image_handlers.shared_fs.errors import Refused
from image_handlers.shared_fs.mounts import MountInfo, mount_of_fd

LOG = logging.getLogger(__name__)

MARKER_NAME = '.image_handlers_fs_id'
MARKER_MAX_BYTES = 4096
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclasses.dataclass
class SourceFile:
    """An open, checked image file. ``fd`` is what was checked: read from it
    (pread, FICLONE, link by /proc/self/fd), never reopen ``path``."""

    fd: int
    path: str                   # real path when it was opened
    st_dev: int
    st_ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    mount: MountInfo
    fs_id: str                  # the configured share it is on
    local_mountpoint: str
    notes: tuple[str, ...] = ()  # how the share was chosen, for explain

    def identity(self) -> tuple[int, int, int, int, int]:
        """(st_dev, st_ino, size, mtime_ns, ctime_ns): changes if the file does."""
        return (self.st_dev, self.st_ino, self.size, self.mtime_ns, self.ctime_ns)

    def changed(self) -> str | None:
        """None while the open file still has the identity it was checked with,
        else what changed (a write, truncate or chmod in place)."""
        now = identity_of(os.fstat(self.fd))
        if now == self.identity():
            return None
        names = ('st_dev', 'st_ino', 'size', 'mtime_ns', 'ctime_ns')
        return ', '.join(f'{n} {a} -> {b}' for n, a, b in
                         zip(names, self.identity(), now) if a != b)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> 'SourceFile':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def identity_of(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def resolve_source(location_path: str, glance_mountpoint: str | None,
                   mounts: dict[str, str], fs_id: str | None, image_id: str,
                   image_size: int | None) -> SourceFile:
    """Check a file location and open its file; raise Refused(reason) otherwise.

    ``location_path``: the URL's path; ``glance_mountpoint`` and ``fs_id``: the
    location metadata's ``mountpoint`` and ``id`` (None when absent); ``mounts``:
    configured ``{id: local mount point}``; ``image_id``/``image_size`` from the
    image record.
    """
    try:
        return _resolve(location_path, glance_mountpoint, mounts, fs_id, image_id,
                        image_size)
    except Refused:
        raise
    except OSError as exc:
        raise Refused(f'file location {location_path!r}: cannot check '
                      f'{exc.filename or "it"}: {exc.strerror or exc}') from exc
    except Exception as exc:    # a gate fails closed, whatever went wrong
        LOG.warning('file location %r: unexpected error while checking it',
                    location_path, exc_info=True)
        raise Refused(f'file location {location_path!r}: cannot check it: '
                      f'{type(exc).__name__}: {exc}') from exc


def _resolve(location_path: str, glance_mountpoint: str | None, mounts: dict[str, str],
             fs_id: str | None, image_id: str, image_size: int | None) -> SourceFile:
    _check_image(image_id, image_size)
    path = _normal_absolute(location_path, 'file location path')
    if os.path.basename(path) != image_id:
        raise Refused(f'file location {path} names file {os.path.basename(path)!r}, '
                      f'but Glance\'s filesystem store names an image\'s file by its '
                      f'id {image_id}: a location naming another file (another '
                      f'image\'s data) is refused')
    fs_id, local_mp, local_path, notes = _select(path, glance_mountpoint, mounts, fs_id)
    root_fd = _open_mount_root(fs_id, local_mp)
    try:
        root_st = os.fstat(root_fd)
        _check_marker(root_fd, root_st, fs_id, local_mp)
        fd, real = _open_beneath(root_fd, root_st, local_mp, local_path, image_id)
    finally:
        os.close(root_fd)
    try:
        st = os.fstat(fd)
        if st.st_size != image_size:
            raise Refused(f'{local_path} has {st.st_size} bytes but the image record '
                          f'says {image_size}: not the image\'s file, or incomplete')
        return SourceFile(fd=fd, path=real, st_dev=st.st_dev, st_ino=st.st_ino,
                          size=st.st_size, mtime_ns=st.st_mtime_ns,
                          ctime_ns=st.st_ctime_ns, mount=mount_of_fd(fd, real),
                          fs_id=fs_id, local_mountpoint=local_mp, notes=tuple(notes))
    except BaseException:
        os.close(fd)
        raise


def _check_image(image_id: object, image_size: object) -> None:
    if (not isinstance(image_id, str) or not image_id or image_id in ('.', '..')
            or '/' in image_id or '\x00' in image_id):
        raise Refused(f'image id {image_id!r} cannot be a file name')
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 0:
        raise Refused(f'image size {image_size!r} is unknown or invalid: the file '
                      f'cannot be checked against it')


def _normal_absolute(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.startswith('/'):
        raise Refused(f'{what} {value!r} is not an absolute path')
    if '\x00' in value:
        raise Refused(f'{what} {value!r} contains NUL')
    if '..' in value.split('/'):
        raise Refused(f'{what} {value!r} contains ".."')
    return os.path.normpath('/' + value.lstrip('/'))


def _under(path: str, directory: str) -> bool:
    return directory == '/' or path.startswith(directory.rstrip('/') + '/')


def _select(path: str, glance_mountpoint: str | None, mounts: dict[str, str],
            fs_id: str | None) -> tuple[str, str, str, list[str]]:
    """(id, our mount point, our path of the file, notes) for the location."""
    configured = {}
    for key, mp in (mounts or {}).items():
        configured[key] = _normal_absolute(mp, f'configured mount point of {key!r}')
    ids = ', '.join(sorted(map(repr, configured))) or 'none'
    notes = []
    if fs_id is not None:
        if fs_id not in configured:
            raise Refused(f'file location {path} is on the share Glance calls '
                          f'{fs_id!r}, which is not configured on this host '
                          f'(configured ids: {ids})')
        local_mp = configured[fs_id]
        if glance_mountpoint:
            glance_mp = _normal_absolute(glance_mountpoint, 'location metadata mountpoint')
            if not _under(path, glance_mp):
                raise Refused(f'file location {path} is not under its metadata '
                              f'mountpoint {glance_mp}')
            local_path = os.path.join(local_mp, os.path.relpath(path, glance_mp))
            notes.append(f'share {fs_id!r}: Glance\'s {glance_mp} is {local_mp} here')
        else:
            if not _under(path, local_mp):
                raise Refused(f'file location {path} (share {fs_id!r}, no mountpoint '
                              f'metadata) is not under {local_mp}, where share '
                              f'{fs_id!r} is mounted here')
            local_path = path
            notes.append(f'share {fs_id!r} without mountpoint metadata: the path is '
                         f'taken as it is, under {local_mp}')
        return fs_id, local_mp, local_path, notes
    candidates = sorted((key, mp) for key, mp in configured.items() if _under(path, mp))
    if not candidates:
        raise Refused(f'file location {path} has no metadata id and is under none of '
                      f'the configured mount points ('
                      f'{", ".join(sorted(configured.values())) or "none"}): configure '
                      f'Glance\'s filesystem_store_metadata_file with id and mountpoint')
    if len(candidates) > 1:
        raise Refused(f'file location {path} has no metadata id and is under several '
                      f'configured mount points '
                      f'({", ".join(f"{k!r}: {m}" for k, m in candidates)}): ambiguous; '
                      f'configure Glance\'s filesystem_store_metadata_file with an id')
    fs_id, local_mp = candidates[0]
    notes.append(f'no metadata id: {path} is under {local_mp} (share {fs_id!r}), the '
                 f'only configured mount point that holds it; its marker decides'
                 + ('; the mountpoint metadata is ignored without an id'
                    if glance_mountpoint else ''))
    return fs_id, local_mp, path, notes


def _open_mount_root(fs_id: str, local_mp: str) -> int:
    try:
        return os.open(local_mp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Refused(f'{local_mp}, where share {fs_id!r} is configured, does not '
                      f'exist: mount the share there') from None
    except NotADirectoryError:
        raise Refused(f'{local_mp}, where share {fs_id!r} is configured, is not a '
                      f'directory') from None


def _check_marker(root_fd: int, root_st: os.stat_result, fs_id: str,
                  local_mp: str) -> None:
    marker = os.path.join(local_mp, MARKER_NAME)
    todo = (f'on the share itself, write its id: printf "%s\\n" {fs_id} > {marker}')
    try:
        fd = os.open(MARKER_NAME, OPEN_FLAGS, dir_fd=root_fd)
    except FileNotFoundError:
        raise Refused(f'no identity marker {marker}: share {fs_id!r} is not mounted '
                      f'at {local_mp}, or it was never marked; {todo}') from None
    except OSError as exc:
        raise Refused(f'identity marker {marker} cannot be opened '
                      f'({exc.strerror}; a symlink is not accepted); {todo}') from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f'identity marker {marker} is not a regular file; {todo}')
        if st.st_dev != root_st.st_dev:
            raise Refused(f'identity marker {marker} is on another file system than '
                          f'{local_mp}; {todo}')
        raw = os.read(fd, MARKER_MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        found = raw.decode('utf-8').strip()
    except UnicodeDecodeError:
        found = None
    if len(raw) > MARKER_MAX_BYTES or found is None:
        raise Refused(f'identity marker {marker} does not hold an id (not UTF-8 text '
                      f'of at most {MARKER_MAX_BYTES} bytes); {todo}')
    if found != fs_id:
        raise Refused(f'identity marker {marker} says {found!r}, not {fs_id!r}: the '
                      f'share mounted at {local_mp} is not the one Glance calls '
                      f'{fs_id!r} (wrong share mounted, or wrong mount point '
                      f'configured); if the marker is wrong, {todo}')


_KINDS = ((stat.S_ISDIR, 'a directory'), (stat.S_ISFIFO, 'a FIFO'),
          (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'),
          (stat.S_ISSOCK, 'a socket'), (stat.S_ISLNK, 'a symlink'))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), 'not a regular file')


def _entry_stat(name: str, dir_fd: int) -> os.stat_result:
    """lstat of ``name`` in ``dir_fd``: lets the gate refuse a device or FIFO
    without opening it (opening some devices acts: a tape rewinds)."""
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def _open_beneath(root_fd: int, root_st: os.stat_result, local_mp: str,
                  local_path: str, image_id: str) -> tuple[int, str]:
    """Open the file by its real path, one component at a time from the mount
    root without following any symlink, each on the root's file system."""
    real_root = os.path.realpath(local_mp)
    if not os.path.samestat(os.stat(real_root), root_st):
        raise Refused(f'{local_mp} changed while it was checked')
    real = os.path.realpath(local_path)
    if not _under(real, real_root) or real == real_root:
        raise Refused(f'{local_path} resolves to {real}, outside {local_mp} where the '
                      f'share is mounted (a symlink out of the share is refused)')
    if os.path.basename(real) != image_id:
        raise Refused(f'{local_path} resolves to {real}, a file named '
                      f'{os.path.basename(real)!r}, not the image id {image_id}: a '
                      f'link to another image\'s file is refused')
    parts = os.path.relpath(real, real_root).split('/')
    dir_fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts[:-1]):
            where = os.path.join(real_root, *parts[:i + 1])
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                raise Refused(f'{where} cannot be opened as a directory without '
                              f'following symlinks ({exc.strerror}): it changed '
                              f'while checked') from None
            os.close(dir_fd)
            dir_fd = next_fd
            _same_device(os.fstat(dir_fd), root_st, where, local_mp)
        entry = _entry_stat(parts[-1], dir_fd)
        if not stat.S_ISREG(entry.st_mode):
            raise Refused(f'{real} is {_kind(entry.st_mode)}, not a regular file')
        _same_device(entry, root_st, real, local_mp)
        try:
            fd = os.open(parts[-1], OPEN_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise Refused(f'{real} cannot be opened for reading without following '
                          f'a symlink: {exc.strerror}') from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f'{real} is {_kind(st.st_mode)}, not a regular file')
        if (st.st_dev, st.st_ino) != (entry.st_dev, entry.st_ino):
            raise Refused(f'{real} was replaced while it was checked')
        _same_device(st, root_st, real, local_mp)
    except BaseException:
        os.close(fd)
        raise
    return fd, real


def _same_device(st: os.stat_result, root_st: os.stat_result, where: str,
                 local_mp: str) -> None:
    if st.st_dev != root_st.st_dev:
        raise Refused(f'{where} is on another file system (device '
                      f'{os.major(st.st_dev)}:{os.minor(st.st_dev)}) than {local_mp} '
                      f'({os.major(root_st.st_dev)}:{os.minor(root_st.st_dev)}): a '
                      f'mount inside the share is refused')
