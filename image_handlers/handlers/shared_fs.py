"""``shared_fs``: an image on a shared file system becomes a disk without a copy.

When Glance's filesystem store and this host's disks share a volume (XFS, btrfs,
GlusterFS, NFS mounted here), copying the image from one directory to another is
waste. In order of preference, each refusal with its reason:

1. ``reflink`` (FICLONE): source and target on one file system that can clone:
   an independent disk, sharing extents until either is written;
2. ``hardlink`` (only when ``shared_fs_methods`` lists it): same file system; the
   inode is made read-only and the link keeps Glance's data alive when the image is
   deleted in Glance;
3. ``symlink`` (only when listed), for raw targets off the share: a symbolic link
   to a *pin* of ours (a hard link in a handler-owned directory on the shared
   volume), never to Glance's path; never for a caller that needs a regular file
   (Nova copies its ``_base`` with ``cp -r``, which would copy the link itself and
   then resize the image through it);
4. ``overlay``, for qcow2 targets of raw images: a qcow2 disk backed by a pin
   (Nova's Qcow2 instance disks, wherever the instance directory is);
5. otherwise step aside, saying why.

Pins are released when no disk recorded as their user exists any more: each time
shared_fs makes a disk on a pin of that volume, the unused ones go.

A location is a claim: ``image_handlers.shared_fs.paths`` maps the location to a
configured mount (checked by its identity marker), refuses anything outside it,
anything but a regular file named by the image id, and a wrong size. Bytes that
were never copied were never hashed on the way, so the source file is verified
once per identity (device, inode, size, times) and the verdict kept in
``state_dir``; later disks of the same file reuse it.
"""
from __future__ import annotations

import os

from oslo_config import cfg
from oslo_log import log as logging

from image_handlers import conf as ih_conf
from image_handlers import exceptions
from image_handlers.handlers.base import Decision, Handler, Refused, Request
from image_handlers.locations import FileLocation, Location
from image_handlers.qemu import img
from image_handlers.results import QCOW2, RAW, SHARED_FILE, Dependency, Provided
from image_handlers.shared_fs import mounts, paths, reflink, verdicts
from image_handlers.shared_fs.errors import Refused as GateRefused
from image_handlers.copy import check_target_path, publish_new
from image_handlers.shared_fs.pins import Pin, PinStore, make_read_only
from image_handlers.targets import FILE, FileTarget

LOG = logging.getLogger(__name__)

REFLINK, HARDLINK, SYMLINK, OVERLAY = 'reflink', 'hardlink', 'symlink', 'overlay'
METHODS = (REFLINK, HARDLINK, SYMLINK, OVERLAY)

shared_fs_opts = (
    cfg.DictOpt(
        'shared_fs_mounts', default={},
        help='Shared file systems this host may serve file:// image locations '
             'from: Glance filesystem id (the "id" of glance_store\'s '
             'filesystem_store_metadata_file, which Glance puts in each location\'s '
             'metadata) to this host\'s mount point, e.g. '
             '"gluster-images:/mnt/images". The mount must hold the identity marker '
             'file .image_handlers_fs_id containing the id, so a missing mount (an '
             'empty directory) or another volume is never read.'),
    cfg.ListOpt(
        'shared_fs_methods', default=[REFLINK, OVERLAY],
        help='How shared_fs may make a disk, in order of preference: reflink '
             '(copy-on-write clone on the same file system; an independent disk), '
             'hardlink (same file system; the image file is made read-only and its '
             'inode shared with Glance, whose deletes then leave the data in '
             'place), symlink (raw targets anywhere: a symbolic link to a pin of the '
             'image file; never for Nova, which copies its _base with "cp -r"), '
             'overlay (qcow2 targets: a qcow2 disk backed by a pin; Nova\'s Qcow2 '
             'instance disks). Hardlink and symlink are off by default: both give '
             'a path to Glance\'s own data (a write through it, or an ownership '
             'change by libvirt\'s dynamic_ownership, reaches Glance\'s file).'),
    cfg.StrOpt(
        'shared_fs_pin_dir', default='.image_handlers/pins/{host}',
        help='Directory, relative to each shared mount point, for the pins that '
             'overlays are backed by (hard links of image files, so they must be '
             'on the same volume). "{host}" is replaced by [image_handlers] host: '
             'each host releases only its own pins.'),
    cfg.BoolOpt(
        'shared_fs_fill_overlays', default=False,
        help='After making an overlay, start an overlay_fill job that copies the '
             'image into it and removes its dependency on the shared volume '
             '(offline: only while no guest has the disk open).'),
)


class SharedFsHandler(Handler):
    name = 'shared_fs'
    target_kinds = frozenset({FILE})
    schemes = frozenset({'file'})
    zero_copy = True
    opts = shared_fs_opts

    def __init__(self, conf: cfg.ConfigOpts):
        super().__init__(conf)
        group = conf[ih_conf.GROUP]
        self.mounts = {k.strip(): v.strip() for k, v in group.shared_fs_mounts.items()}
        self.methods = [m.strip() for m in group.shared_fs_methods if m.strip()]
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise exceptions.ConfigError(
                f'[image_handlers] shared_fs_methods: unknown {", ".join(unknown)} '
                f'(known: {", ".join(METHODS)})')
        self.pin_dir = group.shared_fs_pin_dir.replace('{host}', group.host)
        self.state_dir = group.state_dir
        self.host = group.host
        self.fill_overlays = group.shared_fs_fill_overlays
        self.verdicts = verdicts.VerdictStore(self.state_dir)

    # -- decide ---------------------------------------------------------------------

    def decide(self, request: Request, location: Location) -> Decision:
        assert isinstance(location, FileLocation)
        target: FileTarget = request.target
        image = request.image
        if not self.mounts:
            raise Refused('shared_fs: no shared mounts configured ([image_handlers] '
                          'shared_fs_mounts = FS_ID:MOUNTPOINT)')
        if not image.has_data:
            raise Refused(f'image status is {image.status!r}: Glance holds no data')
        expect = request.expect
        proves = expect.require_checksum() is not None or expect.signature is not None
        with self._open(request, location) as source:
            method, why = self._choose(request, source, target)
            verdict = (self.verdicts.lookup(image.id, expect, source.identity())
                       if proves else None)
        check = ('verified before: verdict reused' if verdict else
                 f'the file is verified against {expect.describe()} first (reads '
                 f'{source.size} bytes once)' if proves else 'NOT verified')
        return Decision(f'{method} of {source.path} to {target.path}: {why}; {check}',
                        method=method)

    def _open(self, request: Request, location: FileLocation) -> paths.SourceFile:
        meta = location.metadata or {}
        try:
            return paths.resolve_source(
                location.path, _str_or_none(meta.get('mountpoint')), self.mounts,
                _str_or_none(meta.get('id')), request.image.id, request.image.size)
        except GateRefused as refused:
            raise Refused(f'shared_fs: {refused.reason}') from None

    def _choose(self, request: Request, source: paths.SourceFile,
                target: FileTarget) -> tuple[str, str]:
        """The first allowed method that can work here, or Refused with why each
        cannot."""
        directory = os.path.dirname(target.path)
        image_format = (request.image.disk_format or RAW).lower()
        why_not = []
        same_fs = _same_fs(source, directory)
        fs = f'{source.mount.fs_type} {source.local_mountpoint}'
        for method in self.methods:
            if method in (REFLINK, HARDLINK, SYMLINK) and target.disk_format != RAW:
                why_not.append(f'{method}: the target is a {target.disk_format} disk '
                               f'(a {method} gives the image\'s own bytes)')
                continue
            if method in (REFLINK, HARDLINK) and not same_fs:
                why_not.append(f'{method}: target {directory} is not on {fs}')
                continue
            if method == REFLINK:
                support = reflink.reflink_support(directory)
                if support.verdict is False:
                    why_not.append(f'reflink: {support.reason}')
                    continue
                return REFLINK, support.reason
            if method == HARDLINK:
                return HARDLINK, f'same file system ({fs})'
            if method == SYMLINK and target.regular_file:
                why_not.append('symlink: the caller needs a regular file (Nova copies '
                               'a _base file with "cp -r", which would copy a link as '
                               'a link and then resize the image through it)')
                continue
            if method == SYMLINK:
                return SYMLINK, (f'symbolic link to a pin in '
                                 f'{self._pin_dir(source)}')
            if method == OVERLAY:
                if target.disk_format != QCOW2:
                    why_not.append('overlay: the target is a raw disk (an overlay '
                                   'is for qcow2 targets)')
                    continue
                if image_format != RAW:
                    why_not.append(f'overlay: the image is {image_format}; overlays '
                                   f'are made over raw images only')
                    continue
                return OVERLAY, (f'qcow2 overlay backed by a pin in '
                                 f'{self._pin_dir(source)}')
        if not why_not:
            why_not.append('no method enabled ([image_handlers] shared_fs_methods)')
        raise Refused(f'shared_fs: source on {fs}, target in {directory} '
                      f'({_fs_of(directory)}): ' + '; '.join(why_not))

    def _pin_dir(self, source: paths.SourceFile) -> str:
        return os.path.join(source.local_mountpoint, self.pin_dir)

    # -- act ------------------------------------------------------------------------

    def act(self, request: Request, location: Location, decision: Decision) -> Provided:
        target: FileTarget = request.target
        with self._open(request, location) as source:  # checked again, on this fd
            if decision.method in (OVERLAY, SYMLINK):
                return self._on_pin(request, source, target, decision.method)
            if decision.method == HARDLINK:
                pinned = self._hardlink(request, source, target)
                return Provided(method=HARDLINK, bytes_copied=0,
                                disk_format=_format(request),
                                verified=self._verify_linked(request, source, target),
                                depends_on=pinned,
                                details={'source': source.path, 'inode': source.st_ino})
            verified = self._verify(request, source)
            reflink.reflink_file(source.fd, target.path, mode=0o644)
            return Provided(method=REFLINK, bytes_copied=0, disk_format=_format(request),
                            verified=verified,
                            details={'source': source.path,
                                     'filesystem': source.mount.fs_type})

    def _verify(self, request: Request, source: paths.SourceFile,
                ctime_ours: bool = False) -> str | None:
        """The image hash holds for this file: a verdict, or a hash now (recorded).
        ``ctime_ours``: we just linked or chmod'ed it (its ctime moved, not its
        data), so a verdict valid before is carried over instead of hashing again."""
        expected = request.expect
        if expected.checksum is None and expected.signature is None:
            LOG.warning('image %s: %s used unverified (no recorded hash; '
                        'allow_unverified_copies)', request.image.id, source.path)
            return None
        if ctime_ours:
            before = self.verdicts.lookup(request.image.id, expected,
                                          source.identity())
            if before is not None and self.verdicts.carry_over(
                    request.image.id, before, paths.identity_of(os.fstat(source.fd))):
                return f'{before.checksum} (verdict reused)'
        try:
            verdict, reused = verdicts.verified(
                self.verdicts, source.fd, request.image.id, source.size, expected,
                description=f'image {request.image.id} file {source.path}',
                ctime_ours=ctime_ours)
        except GateRefused as refused:
            raise exceptions.ChecksumMismatch(refused.reason) from None
        how = 'verdict reused' if reused else 'file hashed now, verdict recorded'
        return f'{verdict.checksum} ({how})'

    def _verify_linked(self, request: Request, source: paths.SourceFile,
                       link: FileTarget) -> str | None:
        """Verify after linking (a link moves ctime); a file that fails loses the
        link we just made, so nothing unverified is left at the target."""
        try:
            return self._verify(request, source, ctime_ours=True)
        except BaseException:
            os.unlink(link.path)
            raise

    def _hardlink(self, request: Request, source: paths.SourceFile,
                  target: FileTarget) -> Dependency:
        check_target_path(target.path)
        make_read_only(source.fd, source.path)
        # Link the inode that was checked (through its descriptor), not the path;
        # a dir fd makes Python use linkat(AT_SYMLINK_FOLLOW), not link(2) of /proc.
        directory, name = os.path.split(target.path)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(f'/proc/self/fd/{source.fd}', name, dst_dir_fd=dir_fd,
                    follow_symlinks=True)
        finally:
            os.close(dir_fd)
        return Dependency(
            SHARED_FILE, source.path,
            pin=f'hardlink {target.path} (inode {source.st_ino}, read-only): the '
                f'data stays while the link exists, even if Glance deletes the image',
            until='never while the disk exists: it is the shared inode itself')

    def _on_pin(self, request: Request, source: paths.SourceFile,
                target: FileTarget, method: str) -> Provided:
        """A disk that reads a pin of ours: a qcow2 overlay, or a symbolic link."""
        check_target_path(target.path)
        store = PinStore(self._pin_dir(source), self.state_dir, host=self.host)
        with store.locked():
            pin = store.pin(source, request.image.id)    # links first: see verdicts
            verified = self._verify(request, source, ctime_ours=True)
            if method == OVERLAY:
                self._make_overlay(pin, target, request.size)
            else:
                _publish_symlink(pin.path, target.path)
            for user in {target.path, target.final_path or target.path}:
                store.add_user(pin, user)
            self._release_unused(store)
        job = None
        if method == OVERLAY and self.fill_overlays:
            from image_handlers.jobs import runner
            job = runner.submit(self.conf, 'overlay_fill', {
                'disk': target.path, 'backing_format': RAW, 'expect_backing': pin.path},
                f'fill {target.path} from {pin.path} (image {request.image.id})').id
        until = (f'job {job} (overlay_fill)' if job else
                 'the disk is deleted (the pin is then released by the next disk '
                 'shared_fs makes on this volume)')
        return Provided(
            method=method, bytes_copied=0,
            disk_format=QCOW2 if method == OVERLAY else _format(request),
            verified=verified, job=job,
            depends_on=Dependency(
                SHARED_FILE, pin.path,
                pin=f'pin {pin.path}: a hard link of {source.path} (inode '
                    f'{source.st_ino}) owned by image_handlers, released when no '
                    f'disk uses it', until=until),
            details={'source': source.path, 'pin': pin.path})

    @staticmethod
    def _release_unused(store: PinStore) -> None:
        """Pins of this volume whose disks are all gone go now (under the lock the
        caller holds, so no disk is being made on one of them)."""
        try:
            for pin in store.release_unused():
                LOG.info('image %s: pin %s released, no disk uses it', pin.image_id,
                         pin.path)
        except exceptions.ImageHandlerError as exc:
            LOG.warning('could not release unused pins in %s: %s', store.pin_dir, exc)

    @staticmethod
    def _make_overlay(pin: Pin, target: FileTarget, size: int | None) -> None:
        grow = size if size and size > pin.size else None
        publish_new(target.path, 'overlay',
                 lambda tmp: img.create_overlay(tmp, pin.path, RAW, size=grow))


def _publish_symlink(pointee: str, path: str) -> None:
    publish_new(path, 'symlink', lambda tmp: os.symlink(pointee, tmp))


def _format(request: Request) -> str:
    return (request.image.disk_format or RAW).lower()


def _str_or_none(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _same_fs(source: paths.SourceFile, directory: str) -> bool:
    try:
        return os.stat(directory).st_dev == source.st_dev
    except OSError:
        return False


def _fs_of(directory: str) -> str:
    try:
        info = mounts.mount_of(directory)
    except OSError:
        return 'unknown file system'
    return f'{info.fs_type} {info.mount_point}'
