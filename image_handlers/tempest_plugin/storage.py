"""Storage-side evidence of which handler provided a root disk.

The scenarios boot through Nova's API and then look at the storage itself,
never at what the API says: an RBD disk's parent snapshot, whether Nova's
``_base`` file shares the Glance file's inode or extents, the backing file of a
qcow2 instance disk, and the reasons nova-compute logged. rados/rbd are imported
only when an RBD check runs, so the plugin loads without Ceph's bindings.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import subprocess
from urllib.parse import unquote, urlsplit

from image_handlers.shared_fs import fiemap

ZERO_COPY_HANDLERS = ('rbd_clone', 'shared_fs', 'iscsi_cor')


class NoEvidence(AssertionError):
    """The storage does not show what the scenario expected; says what it shows."""


@dataclasses.dataclass(frozen=True)
class RbdSpec:
    pool: str
    image: str
    snapshot: str | None
    fsid: str | None = None


def parse_rbd_url(url: str) -> RbdSpec:
    """``rbd://FSID/POOL/IMAGE/SNAP`` as glance_store writes it."""
    parts = urlsplit(url)
    if parts.scheme != 'rbd':
        raise ValueError(f'not an rbd URL: {url!r}')
    pieces = [unquote(p) for p in (parts.netloc + parts.path).split('/')]
    if len(pieces) != 4 or not all(pieces):
        raise ValueError(f'rbd URL {url!r} is not rbd://FSID/POOL/IMAGE/SNAP')
    return RbdSpec(fsid=pieces[0], pool=pieces[1], image=pieces[2], snapshot=pieces[3])


def image_location_urls(image: dict) -> list[str]:
    """Every location URL an image record shows (``locations``, ``direct_url``)."""
    urls = [loc.get('url') for loc in image.get('locations') or []
            if isinstance(loc, dict) and loc.get('url')]
    direct = image.get('direct_url')
    if direct and direct not in urls:
        urls.append(direct)
    return urls


def location_of(image: dict, scheme: str) -> str:
    """The image's first location of ``scheme``; NoEvidence naming what Glance
    shows when there is none (show_image_direct_url / show_multiple_locations)."""
    urls = image_location_urls(image)
    for url in urls:
        if urlsplit(url).scheme == scheme:
            return url
    raise NoEvidence(
        f'image {image.get("id")} shows no {scheme}:// location (shows: '
        f'{urls or "none"}): Glance must show locations to the admin '
        f'(show_image_direct_url / show_multiple_locations)')


def rbd_parent(ceph_conf: str, user: str, keyring: str, pool: str,
               name: str) -> RbdSpec | None:
    """The parent (pool, image, snapshot) of RBD image ``pool/name``, None for an
    image without one; NoEvidence when the image does not exist."""
    import rados   # noqa: PLC0415 - Debian's bindings, only where Ceph is checked
    import rbd     # noqa: PLC0415
    conf = {'keyring': keyring} if keyring else {}
    cluster = rados.Rados(conffile=ceph_conf, rados_id=user, conf=conf)
    cluster.connect(timeout=30)
    try:
        with cluster.open_ioctx(pool) as ioctx:
            try:
                image = rbd.Image(ioctx, name, read_only=True)
            except rbd.ImageNotFound:
                names = sorted(rbd.RBD().list(ioctx))
                raise NoEvidence(f'no RBD image {pool}/{name} (the pool holds '
                                 f'{names[:20]})') from None
            try:
                try:
                    spec = image.get_parent_image_spec()
                except rbd.ImageNotFound:
                    return None
                return RbdSpec(pool=spec['pool_name'], image=spec['image_name'],
                               snapshot=spec['snap_name'])
            finally:
                image.close()
    finally:
        cluster.shutdown()


def base_path(instances_path: str, image_id: str) -> str:
    """Nova's ``_base`` file of an image: ``_base/sha1(image_id)``."""
    return os.path.join(instances_path, '_base',
                        hashlib.sha1(image_id.encode()).hexdigest())


def _physical_extents(path: str) -> list[tuple[int, int, int, bool]] | None:
    """(logical, physical, length, shared) of every extent; None without FIEMAP."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return [(e.logical, e.physical, e.length, e.shared)
                for e in fiemap.extents(fd)]
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
            return None
        raise
    finally:
        os.close(fd)


def _same_blocks(mine, theirs) -> bool:
    """True when every byte of ``mine`` maps to the same device block as the byte
    at the same offset of ``theirs`` (extents may be split differently)."""
    for logical, physical, length, _ in mine:
        covered = 0
        for t_logical, t_physical, t_length, _ in theirs:
            lo, hi = max(logical, t_logical), min(logical + length, t_logical + t_length)
            if lo >= hi:
                continue
            if physical - logical != t_physical - t_logical:
                return False
            covered += hi - lo
        if covered != length:
            return False
    return True


def link_kind(path: str, glance_file: str) -> str:
    """'hardlink' when ``path`` is Glance's file's inode, 'reflink' when its
    extents are Glance's file's own blocks (shared, same physical offsets);
    NoEvidence saying what it is otherwise (a copy)."""
    a, b = os.stat(path), os.stat(glance_file)
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        return 'hardlink'
    if a.st_dev == b.st_dev:
        mine, theirs = _physical_extents(path), _physical_extents(glance_file)
        if mine is None or theirs is None:
            raise NoEvidence(f'{path} is not a hard link of {glance_file} and its file '
                             f'system has no FIEMAP to show shared extents')
        if mine and all(shared for *_, shared in mine) and _same_blocks(mine, theirs):
            return 'reflink'
    raise NoEvidence(
        f'{path} (device {a.st_dev}, inode {a.st_ino}) is neither a hard link nor '
        f'a reflink of Glance\'s file {glance_file} (device {b.st_dev}, inode '
        f'{b.st_ino}): its bytes were copied')


def backing_file(disk: str) -> str | None:
    """The backing file of a qcow2 disk (read with ``qemu-img info -U``: the
    guest holds it open), None for a disk without one."""
    out = subprocess.run(['qemu-img', 'info', '-U', '--output=json', disk],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    info = json.loads(out)
    backing = info.get('full-backing-filename') or info.get('backing-filename')
    if backing and not os.path.isabs(backing):
        backing = os.path.join(os.path.dirname(disk), backing)
    return backing


def shared_fs_evidence(instances_path: str, image_id: str, server_id: str,
                       glance_file: str) -> str:
    """How shared_fs provided the root disk, from the files themselves: Nova's
    ``_base`` a hard link or reflink of Glance's file, or the instance disk a
    qcow2 overlay backed by a pin (a hard link of Glance's file)."""
    base = base_path(instances_path, image_id)
    if os.path.exists(base):
        return f'{link_kind(base, glance_file)} of {glance_file} at {base}'
    disk = os.path.join(instances_path, server_id, 'disk')
    if not os.path.exists(disk):
        raise NoEvidence(f'neither {base} nor {disk} exists: the root disk is not '
                         f'on this host\'s instances_path')
    backing = backing_file(disk)
    if backing is None:
        raise NoEvidence(f'{disk} has no backing file and there is no {base}: the '
                         f'image was copied into the disk')
    kind = link_kind(backing, glance_file)
    return f'qcow2 overlay {disk} backed by {backing}, a {kind} of {glance_file}'


@dataclasses.dataclass
class LoggedPath:
    """What the handler chain logged about one image."""

    refusals: dict[str, list[str]]      # handler -> reasons it was not used
    provided_by: list[str]              # handler names of "provided by" lines
    full_copy: bool                     # a FULL COPY warning, or Nova's download
    lines: list[str]


def logged_path(log_text: str, image_id: str) -> LoggedPath:
    """Parse the chain's lines about ``image_id`` (image_handlers/chain.py and
    nova/hooks.py log them at INFO/WARNING/ERROR)."""
    iid = re.escape(image_id)
    not_used = re.compile(rf'image {iid}: (\w+) not used for (.+?): (.+)$')
    failed = re.compile(rf'image {iid}: handler (\w+) failed on (.+?), trying the next: (.+)$')
    provided = re.compile(rf'image {iid} provided by (\w+)( as a FULL COPY)?')
    no_handler = re.compile(rf'image {iid}: (no handler could provide it|downloading it to)')
    path = LoggedPath(refusals={}, provided_by=[], full_copy=False, lines=[])
    for line in log_text.splitlines():
        if image_id not in line:
            continue
        path.lines.append(line)
        for pattern in (not_used, failed):
            m = pattern.search(line)
            if m:
                path.refusals.setdefault(m.group(1), []).append(m.group(3).strip())
        m = provided.search(line)
        if m:
            path.provided_by.append(m.group(1))
            path.full_copy = path.full_copy or bool(m.group(2))
        if no_handler.search(line):
            path.full_copy = True
    return path
