"""Benchmark: shared_fs reflink, hardlink and qcow2 overlay against the bare calls.

    .venv/bin/python -m bench.bench_shared_fs [--sizes 1,10] [--rounds 9]
                     [--verify-rounds 3] [--copy-rounds 3] [--run-dir DIR]
    .venv/bin/python -m bench.bench_shared_fs --sizes-mib 8,16 --rounds 1 \\
                     --verify-rounds 1 --copy-rounds 1          # the smoke test's run

The issue's goals, for 1 and 10 GiB non-sparse images: making a disk (reflink,
hardlink, overlay) flat as the image grows, and a second disk of a verified image
<= 2x the bare call (FICLONE / link(2) / ``qemu-img create``) measured in the same
run; the first verification and a full stream_copy of the same file alongside.

The lab (its own, in a fresh directory under .lab/ or --run-dir; all of it stopped
and removed at the end, also on failure):

- one XFS (``reflink=1``) on a loop device, switched to direct I/O (``losetup
  --direct-io=on``): the host then does not cache the loop file a second time, so
  writing costs what it would on a block device and a file whose pages are dropped
  (``posix_fadvise DONTNEED``) is really read from the disk. The same XFS serves all
  three methods: hardlink needs one file system, not ext4, and link(2) of an inode
  costs the same whatever the file system;
- a Glance ("glance-bench") with a file store on it, publishing ``{id, mountpoint}``
  location metadata, and the mount's identity marker.

Images, non-sparse (every byte written, so real extents): per size, a Glance record
and a 4 KiB placeholder uploaded through Glance's API into the xfs store (so the
location and its metadata are Glance's own); then the file Glance wrote is filled in
place with the full size (a 64 MiB random block, each repetition stamped with its
index), fsynced, and the record's size, virtual_size, checksum (md5) and
os_hash_value (sha512) are set in Glance's database to the data's -- the record an
upload makes, at a fraction of the time: this lab's Glance takes uploads at ~100 MiB/s
(~2 minutes for 11 GiB); the fill is bound by hashing (md5 and sha512, in two
threads, on two vCPUs that hash together barely faster than one: ~5 s per GiB here).
Beside each image A: an image B of the same bytes whose file is a reflink clone of A's
(an inode of its own): hardlink disks link B, because link(2) and unlink move the
linked inode's ctime, and A's verdict must only see what a deployment does to it; and
a third clone C, not an image, for the bare link(2) (linking B behind the handler's
back would cost B its verdict the same way).

Measured in-process, ``api.fetch`` through the real chain (a new chain per fetch, as
the CLI makes; Glance's record and locations API included), medians of interleaved
rounds (sizes and methods interleaved, bare call and fetch alternating which goes
first), for a second disk of a verified image (the verdict reused, checked in every
result):

- reflink (``shared_fs_methods = reflink``) vs a bare FICLONE into the same directory
  (create the file, ``ioctl(FICLONE)``, close); also shown: FICLONE made durable
  (+ fsync of the clone and its directory), which the handler does;
- hardlink (``shared_fs_methods = hardlink``) vs a bare ``os.link``;
- overlay (qcow2 target, ``shared_fs_methods = overlay``; the pin is made by the
  first overlay, later ones reuse it) vs a bare ``qemu-img create -f qcow2 -F raw
  -b FILE``.
The handler's own decide + act is timed by wrapping the real methods in place, as are
the chain's other parts (chain setup, Glance) and the steps inside decide and act, so
where the time goes is measured, not estimated.

The first verification: the verdict file removed, the file's cached pages dropped, a
reflink fetch, which hashes the whole file; against a bare read of the file (same
buffer size, cold as well) and hashlib's sha512 speed on one core (sampled in each
round). A full stream_copy of the same image from Glance's data API into the same
directory, cold as well. Each of these starts from primed memory (bench.common says
why). The verdicts' 2-second racy rule is respected: each first verification waits
until the file last changed more than 2 s ago, so the verdict it records is reused.

Disks kept until the end: every hardlink disk (removing one moves B's ctime) and the
first overlay of each image (with all its overlays gone, the next overlay made on the
volume releases the pin, whose unlink moves A's ctime): either would make the next
disk of that image hash it again. The end of the run shows it with ``explain``.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import fcntl
import hashlib
import io
import mmap
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from image_handlers import api  # noqa: E402
from image_handlers import chain as chain_module  # noqa: E402
from image_handlers.chain import HandlerChain  # noqa: E402
from image_handlers.glance import GlanceReader  # noqa: E402
from image_handlers.handlers.shared_fs import SharedFsHandler  # noqa: E402
from image_handlers.qemu import img as qemu_img  # noqa: E402
from image_handlers.shared_fs import paths, pins, reflink, verdicts  # noqa: E402
from image_handlers.targets import FileTarget  # noqa: E402
from bench.common import hashlib_speed, prime_memory  # noqa: E402
from tools.lab import GlanceService, LoopFsService, write_fs_marker  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20
FICLONE = 0x40049409
FS_ID = 'bench-xfs'
STORE = 'xfs'
METHODS = ('reflink', 'hardlink', 'overlay')
BARE = {'reflink': 'bare FICLONE', 'hardlink': 'bare link(2)',
        'overlay': 'bare qemu-img create'}
GLANCE_PHASE = 'Glance: record + locations API'
CHAIN_PHASE = 'chain setup (handlers, conf)'
DECIDE, ACT = 'shared_fs decide', 'shared_fs act'
HASH_PHASE = 'hash the file (verify_file)'
FLAT_GOAL = 1.5         # "flat": a cost growing with the size would give ~10 here
RATIO_GOAL = 2.0
FULL_COPY_BUDGET = 150.0  # seconds one full copy may take before it is not repeated


def label(size: int) -> str:
    return f'{size // GiB} GiB' if size % GiB == 0 else f'{size // MiB} MiB'


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def mark(ok: bool) -> str:
    return 'MET' if ok else 'MISSED'


class PhaseTimer:
    """Times the real calls of a fetch by wrapping them in place (as bench_rbd_clone
    does). TOP phases do not nest; STEPS run inside decide and act."""

    TOP = ((CHAIN_PHASE, HandlerChain, '__init__'),
           ('Glance client setup (keystoneauth)', GlanceReader, '__init__'),
           (GLANCE_PHASE, GlanceReader, 'get_image'),
           ('target checks (check_writable)', FileTarget, 'check_writable'),
           ('rank locations', chain_module, 'rank_locations'),
           (DECIDE, SharedFsHandler, 'decide'),
           (ACT, SharedFsHandler, 'act'),
           ('log the result (_log_used)', HandlerChain, '_log_used'))
    STEPS = (('gate: resolve_source (decide + act)', paths, 'resolve_source'),
             ('reflink_support (mount table, XFS geometry)', reflink, 'reflink_support'),
             ('verdict lookup', verdicts.VerdictStore, 'lookup'),
             ('verdict carry_over (written, fsynced)', verdicts.VerdictStore,
              'carry_over'),
             ('verdict record (written, fsynced)', verdicts.VerdictStore, 'record'),
             (HASH_PHASE, verdicts, 'verify_file'),
             ('reflink_file (FICLONE, fsync, publish)', reflink, 'reflink_file'),
             ('make read-only (fchmod)', pins, 'make_read_only'),
             ('link (_hardlink, incl. make read-only)', SharedFsHandler, '_hardlink'),
             ('pin (PinStore.pin)', pins.PinStore, 'pin'),
             ('qemu-img create (create_overlay)', qemu_img, 'create_overlay'),
             ('record the disk as a pin user (add_user)', pins.PinStore, 'add_user'),
             ('release unused pins (release_unused)', pins.PinStore, 'release_unused'))

    def __init__(self) -> None:
        self.current: collections.Counter = collections.Counter()
        self.samples: dict[str, dict[str, list[float]]] = collections.defaultdict(
            lambda: collections.defaultdict(list))
        self.missing: list[str] = []
        for label_, owner, attr in self.TOP + self.STEPS:
            func = getattr(owner, attr, None)
            if func is None or isinstance(vars(owner).get(attr), staticmethod):
                self.missing.append(f'{label_} ({attr})')
                continue
            setattr(owner, attr, self._wrap(label_, func))

    def _wrap(self, name: str, func):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.current[name] += time.perf_counter() - t0
        timed.__wrapped__ = func
        return timed

    @classmethod
    def null(cls) -> 'PhaseTimer':
        """A timer whose samples are thrown away (the wrappers are installed once)."""
        timer = cls.__new__(cls)
        timer.current = collections.Counter()
        timer.samples = collections.defaultdict(lambda: collections.defaultdict(list))
        timer.missing = []
        return timer

    def start(self) -> None:
        self.current.clear()

    def stop(self, key: str, total: float) -> None:
        got = self.samples[key]
        got['total'].append(total)
        for name, _o, _a in self.TOP + self.STEPS:
            got[name].append(self.current[name])
        top = sum(self.current[name] for name, _o, _a in self.TOP)
        got['other (chain walk, results, logging)'].append(total - top)
        got['handler'].append(self.current[DECIDE] + self.current[ACT])


class Image:
    """One size: Glance image A (reflink, overlay), B (hardlink) and clone C."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.a_id = self.b_id = ''
        self.a_path = self.b_path = self.c_path = ''
        self.sha512 = self.md5 = ''


class Bench:
    def __init__(self, args, work: Path, xfs: LoopFsService, glance: GlanceService):
        self.args, self.work, self.xfs, self.glance = args, work, xfs, glance
        self.mp = Path(xfs.mountpoint)
        self.nova = self.mp / 'nova' / 'instances'       # Nova's disks, on the share
        self.nova.mkdir(parents=True)
        self.state = work / 'state'
        self.client = glance.client()
        self.images: list[Image] = []
        self.kept: list[str] = []        # disks removed only at the end (see docstring)
        self.not_reused: list[str] = []
        self.confs = {m: self._conf(m, 'shared_fs', m) for m in METHODS}
        self.confs['copy'] = self._conf('copy', 'stream_copy', None)
        self.src_fds: dict[int, int] = {}

    def _conf(self, name: str, handlers: str, methods: str | None):
        path = self.work / f'nova-{name}.conf'
        path.write_text(
            self.glance.nova_conf()
            + f'\n[image_handlers]\nstate_dir = {self.state}\nhandlers = {handlers}\n'
            + f'shared_fs_mounts = {FS_ID}:{self.mp}\n'
            + (f'shared_fs_methods = {methods}\n' if methods else '')
            + 'progress_interval = 3600\nprefer_measured_throughput = false\n')
        return api.make_conf([str(path)])

    # -- images ----------------------------------------------------------------------

    def _record(self, name: str) -> tuple[str, str]:
        """A Glance image with a placeholder uploaded into the xfs store: (id, path)."""
        img = self.client.images.create(name=name, disk_format='raw',
                                        container_format='bare')
        self.client.images.upload(img['id'], io.BytesIO(b'\x01' * 4096),
                                  image_size=4096, backend=STORE)
        rec = self.client.images.get(img['id'])
        (loc,) = rec['locations']
        assert loc['metadata'].get('id') == FS_ID, loc
        assert loc['url'].startswith('file://'), loc
        return img['id'], loc['url'][len('file://'):]

    def _set_row(self, image_id: str, image: Image) -> None:
        db = sqlite3.connect(self.glance.workdir / 'glance.sqlite')
        try:
            with db:
                db.execute('update images set size = ?, virtual_size = ?, checksum = ?, '
                           'os_hash_algo = ?, os_hash_value = ? where id = ?',
                           (image.size, image.size, image.md5, 'sha512', image.sha512,
                            image_id))
        finally:
            db.close()
        rec = self.client.images.get(image_id)
        assert (rec['size'], rec['os_hash_value'], rec['status']) == (
            image.size, image.sha512, 'active'), rec

    def make_image(self, size: int) -> Image:
        image = Image(size)
        self.images.append(image)
        image.a_id, image.a_path = self._record(f'bench-sfs-{label(size)}-a')
        image.md5, image.sha512 = fill(image.a_path, size)
        self._set_row(image.a_id, image)
        image.b_id, image.b_path = self._record(f'bench-sfs-{label(size)}-b')
        clone_into(image.a_path, image.b_path)
        self._set_row(image.b_id, image)
        link_src = self.mp / 'bench-link-sources'
        link_src.mkdir(exist_ok=True)
        image.c_path = str(link_src / image.a_id)
        clone_into(image.a_path, image.c_path, create=True)
        for path in (image.a_path, image.b_path, image.c_path):
            drop_cache(path)
        self.src_fds[size] = os.open(image.a_path, os.O_RDONLY | os.O_CLOEXEC)
        return image

    # -- the runs ----------------------------------------------------------------------

    def _target(self, tag: str) -> str:
        return str(self.nova / f'{tag}-{uuid.uuid4().hex[:8]}')

    def fetch(self, method: str, image: Image, phases: PhaseTimer, key: str,
              expect: str = 'verdict reused', keep: bool = False) -> float:
        """One api.fetch through shared_fs; the target is removed unless kept."""
        image_id = image.b_id if method == 'hardlink' else image.a_id
        target = self._target(method)
        phases.start()
        t0 = time.perf_counter()
        result = api.fetch(self.confs[method], image_id, target,
                           disk_format='qcow2' if method == 'overlay' else 'raw')
        seconds = time.perf_counter() - t0
        phases.stop(key, seconds)
        assert (result.handler, result.method, result.bytes_copied) == (
            'shared_fs', method, 0), result.to_dict()
        if expect not in (result.verified or ''):
            self.not_reused.append(f'{method} {label(image.size)} ({key}): '
                                   f'verified = {result.verified!r}')
        if keep or method == 'hardlink':
            self.kept.append(target)
        else:
            os.unlink(target)
        return seconds

    def bare(self, method: str, image: Image, durable: bool = False) -> float:
        target = self._target(f'bare-{method}')
        if method == 'reflink':
            src = self.src_fds[image.size]
            t0 = time.perf_counter()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o644)
            try:
                fcntl.ioctl(fd, FICLONE, src)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if durable:
                fsync_dir(str(self.nova))
            seconds = time.perf_counter() - t0
        elif method == 'hardlink':
            t0 = time.perf_counter()
            os.link(image.c_path, target)
            seconds = time.perf_counter() - t0
        else:
            argv = ['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
                    image.a_path, target]
            t0 = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if proc.returncode:
                raise SystemExit(f'{" ".join(argv)} failed: {proc.stderr}')
        os.unlink(target)
        return seconds

    def first_verification(self, image: Image, phases: PhaseTimer) -> float:
        """A reflink fetch right after the verdict file is removed, cold."""
        verdicts.VerdictStore(self.state).forget(image.a_id)
        settle(image.a_path)
        drop_cache(image.a_path)
        prime_memory(min(image.size, 2 * GiB) + 512 * MiB)
        seconds = self.fetch('reflink', image, phases, f'verify:{image.size}',
                             expect='file hashed now')
        drop_cache(image.a_path)
        return seconds

    def bare_read(self, image: Image) -> float:
        drop_cache(image.a_path)
        prime_memory(min(image.size, 2 * GiB) + 512 * MiB)
        fd = os.open(image.a_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            view = memoryview(bytearray(verdicts.HASH_BUFFER))
            t0 = time.perf_counter()
            pos = 0
            while pos < image.size:
                n = os.preadv(fd, [view[:min(len(view), image.size - pos)]], pos)
                if not n:
                    raise SystemExit(f'{image.a_path} ended at {pos}')
                pos += n
            seconds = time.perf_counter() - t0
        finally:
            os.close(fd)
        drop_cache(image.a_path)
        return seconds

    def stream_copy(self, image: Image) -> float:
        target = self._target('copy')
        drop_cache(image.a_path)
        prime_memory(min(image.size, 2 * GiB) + 512 * MiB)
        t0 = time.perf_counter()
        result = api.fetch(self.confs['copy'], image.a_id, target)
        seconds = time.perf_counter() - t0
        assert (result.handler == 'stream_copy' and result.bytes_copied == image.size
                and result.verified and result.location.startswith('glance:')), \
            result.to_dict()
        os.unlink(target)
        drop_cache(image.a_path)
        return seconds

    def explain_after_removals(self) -> list[str]:
        """What the next disk would do after a deployment's ordinary removals."""
        lines = []
        image = self.images[0]
        hard = [t for t in self.kept if os.path.basename(t).startswith('hardlink-')
                and os.stat(t).st_ino == os.stat(image.b_path).st_ino]
        if hard:
            os.unlink(hard[0])
            self.kept.remove(hard[0])
            res = api.explain(self.confs['hardlink'], image.b_id, self._target('x'))
            lines.append(f'hardlink, {label(image.size)}, after one hardlinked disk '
                         f'was deleted: {_check_part(res)}')
        res = api.explain(self.confs['reflink'], image.a_id, self._target('x'))
        lines.append(f'reflink, {label(image.size)}, while an overlay on its pin '
                     f'exists: {_check_part(res)}')
        if len(self.images) > 1:
            # Its last overlay deleted, then an overlay of another image made on the
            # same volume (which may release unused pins on the way).
            overlays = [t for t in self.kept if t.startswith(str(self.nova / 'overlay-'))
                        and image.a_id in subprocess.run(
                            ['qemu-img', 'info', '-U', t], capture_output=True,
                            text=True).stdout]
            for t in overlays:
                os.unlink(t)
                self.kept.remove(t)
            other = self.images[-1]
            self.fetch('overlay', other, PhaseTimer.null(), 'after-removals')
            res = api.explain(self.confs['reflink'], image.a_id, self._target('x'))
            pin_left = any(p.image_id == image.a_id for p in self._pin_store().pins())
            lines.append(f'reflink, {label(image.size)}, after its last overlay was '
                         f'deleted and an overlay of the {label(other.size)} image was '
                         f'made (its pin {"kept" if pin_left else "released"}): '
                         f'{_check_part(res)}')
        return lines

    def _pin_store(self) -> pins.PinStore:
        host = self.confs['overlay'].image_handlers.host
        return pins.PinStore(self.mp / '.image_handlers' / 'pins' / host, self.state,
                             host=host)

    # -- clean-up ----------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Disks, pins, Glance images, sources: what could not be removed."""
        left = []
        for fd in self.src_fds.values():
            os.close(fd)
        for target in self.kept:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
        pin_dir = self.mp / '.image_handlers'
        store = self._pin_store()
        try:
            store.release_unused()
        except Exception as exc:  # noqa: BLE001 - report, keep cleaning
            left.append(f'pins: {exc}')
        for pin in store.pins():
            left.append(f'pin {pin.path} still recorded')
        for image in self.images:
            for image_id in (image.a_id, image.b_id):
                if not image_id:
                    continue
                try:
                    self.client.images.delete(image_id)
                except Exception as exc:  # noqa: BLE001
                    left.append(f'Glance image {image_id}: {exc}')
            if image.c_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(image.c_path)
        leftover = [p for p in (self.mp / 'images').iterdir()] if (
            self.mp / 'images').is_dir() else []
        left += [f'{p} left in the Glance store' for p in leftover]
        left += [f'{p} left in the instance dir' for p in self.nova.iterdir()]
        shutil.rmtree(pin_dir, ignore_errors=True)
        return left


def _check_part(result) -> str:
    """The verification half of shared_fs's reason ("...; verified before ...")."""
    for attempt in result.attempts:
        if attempt.handler == 'shared_fs':
            return attempt.reason.rsplit('; ', 1)[-1]
    return 'no shared_fs attempt'


# -- files -------------------------------------------------------------------------------


def fill(path: str, size: int) -> tuple[str, str]:
    """Write ``size`` bytes of incompressible data over the file at ``path`` (in
    place, fsynced); (md5, sha512) computed on the way, in two threads.

    One page-aligned buffer is reused (a fresh 64 MiB per chunk pays this VM's
    first-touch cost, bench.common.prime_memory) and written with O_DIRECT when the
    size allows it, so the image does not also fill the page cache."""
    chunk = 64 * MiB
    buf = mmap.mmap(-1, chunk)
    buf[:] = os.urandom(chunk)
    md5, sha = hashlib.md5(), hashlib.sha512()
    flags = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC
    direct = size % 4096 == 0 and hasattr(os, 'O_DIRECT')
    try:
        fd = os.open(path, flags | (os.O_DIRECT if direct else 0))
    except OSError:
        fd = os.open(path, flags)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            view = memoryview(buf)
            for i, start in enumerate(range(0, size, chunk)):
                n = min(chunk, size - start)
                buf[:8] = i.to_bytes(8, 'little')
                data = view[:n]
                hashing = [pool.submit(md5.update, data), pool.submit(sha.update, data)]
                done = 0
                while done < n:
                    done += os.pwrite(fd, data[done:], start + done)
                for job in hashing:
                    job.result()
            del view, data
        os.fsync(fd)
    finally:
        os.close(fd)
        buf.close()
    return md5.hexdigest(), sha.hexdigest()


def clone_into(src: str, dst: str, create: bool = False) -> None:
    """Make ``dst`` (Glance's placeholder, or a new file) a reflink clone of ``src``."""
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create
                                          else os.O_TRUNC)
    dfd = os.open(dst, flags, 0o644)
    try:
        fcntl.ioctl(dfd, FICLONE, sfd)
        os.fsync(dfd)
    finally:
        os.close(dfd)
        os.close(sfd)


def drop_cache(path: str) -> None:
    """Drop the file's (clean) cached pages: the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def settle(path: str) -> None:
    """Wait until the file last changed more than the verdicts' racy window ago."""
    st = os.stat(path)
    wait = verdicts.RACY_SECONDS + 0.05 - (time.time() - max(st.st_mtime, st.st_ctime))
    if wait > 0:
        time.sleep(wait)


def fs_size_mib(sizes: list[int]) -> int:
    """Every image A (B and C share its extents), one full copy at a time, margin."""
    need = sum(sizes) + max(sizes)
    return max(512, int(need * 1.08 / MiB) + 1024)


# -- main -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='1,10', help='image sizes in GiB')
    parser.add_argument('--sizes-mib', default=None,
                        help='image sizes in MiB instead (a quick smoke run)')
    parser.add_argument('--rounds', type=int, default=9,
                        help='interleaved rounds of disk creation (median)')
    parser.add_argument('--verify-rounds', type=int, default=3,
                        help='rounds of the first verification and the bare read')
    parser.add_argument('--copy-rounds', type=int, default=3,
                        help='rounds of the full stream_copy')
    parser.add_argument('--run-dir', default=None,
                        help='parent of the lab and work directory (default: .lab/)')
    args = parser.parse_args()
    if args.sizes_mib:
        sizes = [int(s) * MiB for s in args.sizes_mib.split(',') if s.strip()]
    else:
        sizes = [int(s) * GiB for s in args.sizes.split(',') if s.strip()]
    if not sizes or min(sizes) <= 0 or min(args.rounds, args.verify_rounds,
                                           args.copy_rounds) < 1:
        parser.error('sizes and rounds must be positive')
    hash_sample = 512 * MiB if min(sizes) >= GiB else 64 * MiB
    parent = Path(args.run_dir or os.path.join(REPO, '.lab'))
    parent.mkdir(parents=True, exist_ok=True)
    size_mib = fs_size_mib(sizes)
    free = shutil.disk_usage(parent).free
    if free < (size_mib + 2048) * MiB:
        raise SystemExit(f'{parent}: {free // GiB} GiB free, the XFS may take '
                         f'{size_mib // 1024 + 2} GiB of it: free some space')
    work = Path(tempfile.mkdtemp(prefix='bench-shared-fs-', dir=parent))
    lab_dir = work / 'lab'
    xfs = glance = bench = None
    left: list[str] = []
    t_setup = time.perf_counter()
    try:
        xfs = LoopFsService('xfs', size_mib=size_mib, name='xfs-bench',
                            run_dir=lab_dir).start()
        dio = subprocess.run(['losetup', '--direct-io=on', xfs.device],
                             capture_output=True, text=True)
        dio_note = ('loop device with direct I/O' if dio.returncode == 0 else
                    f'loop device WITHOUT direct I/O ({dio.stderr.strip()})')
        write_fs_marker(xfs.mountpoint, FS_ID)
        (xfs.mountpoint / 'images').mkdir()
        glance = GlanceService(name='glance-bench', run_dir=lab_dir, file_stores={
            STORE: (xfs.mountpoint / 'images',
                    {'id': FS_ID, 'mountpoint': str(xfs.mountpoint)})}).start()
        phases = PhaseTimer()
        bench = Bench(args, work, xfs, glance)
        fill_s = {}
        for size in sizes:
            t0 = time.perf_counter()
            bench.make_image(size)
            fill_s[size] = time.perf_counter() - t0
        setup = time.perf_counter() - t_setup
        results = run(bench, phases, sizes, args, hash_sample)
        report(args, sizes, setup, fill_s, dio_note, size_mib, bench, phases,
               results)
    finally:
        if bench is not None:
            try:
                left += bench.cleanup()
            except Exception as exc:  # noqa: BLE001 - keep stopping the lab
                left.append(f'cleanup failed: {exc!r}')
        for svc in (glance, xfs):
            if svc is not None:
                try:
                    svc.stop()
                except Exception as exc:  # noqa: BLE001
                    left.append(f'{svc.name}: {exc}')
        shutil.rmtree(work, ignore_errors=True)
        if work.exists():
            left.append(f'{work} not removed')
    if left:
        print('NOT removed:', '; '.join(left))
        return 1
    print('\nevery disk, pin, image and file created was removed; lab stopped')
    return 0


def run(bench: Bench, phases: PhaseTimer, sizes: list[int], args, hash_sample: int):
    res = {key: collections.defaultdict(list)
           for key in ('bare', 'e2e', 'durable', 'verify', 'read', 'copy')}
    res.update(hash=[], warmup={}, skipped=[])
    # Warm-up, per size: A's first disk verifies it (round 1 of the first
    # verification, cold like the others), B's first (hardlink) disk verifies B, the
    # first overlay makes the pin. The first disks are kept; the bare calls once.
    for image in bench.images:
        res['hash'].append(hashlib_speed(hash_sample))
        res['read'][image.size].append(bench.bare_read(image))
        res['verify'][image.size].append(bench.first_verification(image, phases))
        settle(image.b_path)
        prime_memory(min(image.size, 2 * GiB) + 512 * MiB)
        res['warmup'][('hardlink', image.size)] = bench.fetch(
            'hardlink', image, phases, f'warmup-hardlink:{image.size}',
            expect='file hashed now')
        drop_cache(image.b_path)
        res['warmup'][('overlay', image.size)] = bench.fetch(
            'overlay', image, phases, f'warmup-overlay:{image.size}', keep=True)
        for method in METHODS:
            bench.bare(method, image)
    # Second disks, interleaved: sizes, methods, and which of bare/fetch goes first.
    for round_no in range(args.rounds):
        for image in bench.images:
            for method in METHODS:
                steps = [lambda: res['bare'][method, image.size].append(
                             bench.bare(method, image)),
                         lambda: res['e2e'][method, image.size].append(
                             bench.fetch(method, image, phases,
                                         f'{method}:{image.size}'))]
                for step in (steps if round_no % 2 == 0 else steps[::-1]):
                    step()
            res['durable']['reflink', image.size].append(
                bench.bare('reflink', image, durable=True))
    # The first verification (round 1 was the warm-up's), the bare read, hashlib.
    for _ in range(args.verify_rounds - 1):
        for image in bench.images:
            res['hash'].append(hashlib_speed(hash_sample))
            res['read'][image.size].append(bench.bare_read(image))
            res['verify'][image.size].append(bench.first_verification(image, phases))
    # Full copies through Glance's data API.
    for image in bench.images:
        for _ in range(args.copy_rounds):
            seconds = bench.stream_copy(image)
            res['copy'][image.size].append(seconds)
            if seconds > FULL_COPY_BUDGET and args.copy_rounds > 1:
                res['skipped'].append(f'stream_copy {label(image.size)}: one run took '
                                      f'{seconds:.0f} s, not repeated')
                break
    res['explain'] = bench.explain_after_removals()
    return res


def report(args, sizes, setup, fill_s, dio_note, size_mib, bench, phases, res) -> None:
    first, last = sizes[0], sizes[-1]
    print(f'\nshared_fs benchmark: non-sparse images of '
          f'{", ".join(label(s) for s in sizes)} on one XFS (reflink=1, {size_mib} MiB, '
          f'{dio_note}), {os.cpu_count()} CPUs; medians of {args.rounds} interleaved '
          f'rounds (disks), {args.verify_rounds} (first verification), '
          f'{args.copy_rounds} (full copies)')
    print(f'setup {setup:.1f} s, of which filling the images (data written, fsynced, '
          f'md5 + sha512): ' + ', '.join(f'{label(s)} {fill_s[s]:.1f} s' for s in sizes))
    print('\nsecond disk of a verified image (verdict reused), median ms:')
    print(f'  {"method":<10}{"size":>8}{"bare call":>12}{"handler":>10}{"fetch":>10}'
          f'{"handler/bare":>14}{"fetch/bare":>12}   bare call is')
    for method in METHODS:
        for size in sizes:
            b = ms(res['bare'][method, size])
            h = ms(phases.samples[f'{method}:{size}']['handler'])
            e = ms(res['e2e'][method, size])
            print(f'  {method:<10}{label(size):>8}{b:>12.3f}{h:>10.2f}{e:>10.2f}'
                  f'{h / b:>14.2f}{e / b:>12.2f}   {BARE[method]}')
    for size in sizes:
        print(f'  (FICLONE made durable, + fsync of the clone and its directory, '
              f'{label(size)}: {ms(res["durable"]["reflink", size]):.3f} ms)')

    print('\nratios (goal in brackets):')
    for method in METHODS:
        for size in sizes:
            b = ms(res['bare'][method, size])
            got = phases.samples[f'{method}:{size}']
            h, e = ms(got['handler']), ms(res['e2e'][method, size])
            print(f'  {method:<8} {label(size):>7}: handler decide+act / {BARE[method]} '
                  f'= {h / b:.2f} [<= {RATIO_GOAL:g}] {mark(h / b <= RATIO_GOAL)}; '
                  f'whole fetch / bare = {e / b:.2f} [<= {RATIO_GOAL:g}] '
                  f'{mark(e / b <= RATIO_GOAL)} (Glance {ms(got[GLANCE_PHASE]):.1f} ms, '
                  f'chain setup {ms(got[CHAIN_PHASE]):.1f} ms)')
    for size in sizes:
        d = ms(res['durable']['reflink', size])
        h = ms(phases.samples[f'reflink:{size}']['handler'])
        print(f'  (reflink  {label(size):>7}: handler decide+act / FICLONE made durable '
              f'= {h / d:.2f}; no goal, shown because the handler fsyncs its clone)')
    if len(sizes) > 1:
        print(f'  flatness, t({label(last)}) / t({label(first)}) '
              f'[<= {FLAT_GOAL:g}; a cost growing with the size would give '
              f'{last / first:.0f}]:')
        for method in METHODS:
            e = ms(res['e2e'][method, last]) / ms(res['e2e'][method, first])
            h = (ms(phases.samples[f'{method}:{last}']['handler'])
                 / ms(phases.samples[f'{method}:{first}']['handler']))
            b = ms(res['bare'][method, last]) / ms(res['bare'][method, first])
            print(f'    {method:<8}: whole fetch {e:.2f} {mark(e <= FLAT_GOAL)}; '
                  f'handler {h:.2f} {mark(h <= FLAT_GOAL)}; {BARE[method]} {b:.2f}')
    if bench.not_reused:
        print('  NOTE: second disks whose verdict was NOT reused (they hashed the file; '
              'their times are in the medians):')
        for line in bench.not_reused:
            print(f'    {line}')

    hash_speed = statistics.median(res['hash'])
    print(f'\nfirst verification (verdict file removed, file cold), median s; hashlib '
          f'sha512 on one core {hash_speed / MiB:.0f} MiB/s:')
    print(f'  {"size":>8}{"fetch":>9}{"hashing":>9}{"read":>8}{"hash":>8}'
          f'{"fetch/(read+hash)":>19}{"fetch/max(read,hash)":>22}{"1st/2nd disk":>14}')
    for size in sizes:
        v = statistics.median(res['verify'][size])
        hashing = statistics.median(phases.samples[f'verify:{size}'][HASH_PHASE])
        r = statistics.median(res['read'][size])
        hs = size / hash_speed
        disk = ms(phases.samples[f'verify:{size}']['total']) / ms(
            res['e2e']['reflink', size])
        print(f'  {label(size):>8}{v:>9.2f}{hashing:>9.2f}{r:>8.2f}{hs:>8.2f}'
              f'{v / (r + hs):>19.2f}{v / max(r, hs):>22.2f}{disk:>13.0f}x')
    print('  (hashing: the handler\'s verify_file; read: a bare cold read of the file '
          'with the same 16 MiB buffer; hash: size / hashlib speed; 1st/2nd disk: the '
          'first disk over a second one. No goal in the issue: 1.0 in the '
          'first ratio means reading then hashing, back to back.)')
    for size in sizes:
        hw = res['warmup'][('hardlink', size)]
        ow = res['warmup'][('overlay', size)]
        print(f'  {label(size)}: first hardlink disk of image B (verifies B): '
              f'{hw:.2f} s; first overlay (makes the pin; A verified): '
              f'{ow * 1000:.1f} ms')

    print('\nfull stream_copy of the same image from Glance\'s data API into the same '
          'directory (cold source, sha512 verified), median s:')
    for size in sizes:
        vals = res['copy'][size]
        t = statistics.median(vals)
        rate = size / t / MiB
        v = statistics.median(res['verify'][size])
        print(f'  {label(size):>8}: {t:.2f} s ({len(vals)} runs), {rate:.0f} MiB/s '
              f'= {rate / (hash_speed / MiB):.2f} x hashlib; {t / v:.2f} x the first '
              f'verification; {t * 1000 / ms(res["e2e"]["reflink", size]):.0f} x a '
              f'second reflink disk')
    for line in res['skipped']:
        print(f'  {line}')

    print('\nwhere the time of a second disk goes (median ms per fetch, the real calls '
          'timed in place):')
    head = ''.join(f'{f"{m} {label(s)}":>16}' for m in METHODS for s in sizes)
    print(f'  {"phase":<46}{head}')
    rows = ([name for name, _o, _a in PhaseTimer.TOP]
            + ['other (chain walk, results, logging)', 'total'])
    steps = [name for name, _o, _a in PhaseTimer.STEPS
             if any(ms(phases.samples[f'{m}:{s}'][name]) > 0
                    for m in METHODS for s in sizes)]
    top = len(PhaseTimer.TOP)
    for name in rows[:top] + ['  of which, inside decide and act:'] + steps + rows[top:]:
        if name.startswith('  of which'):
            print(name)
            continue
        indent = '    ' if name in steps else '  '
        print(f'{indent}{name:<{48 - len(indent)}}' + ''.join(
            f'{ms(phases.samples[f"{m}:{s}"][name]):>16.2f}'
            for m in METHODS for s in sizes))
    print(f'  {"bare call, for reference":<46}' + ''.join(
        f'{ms(res["bare"][m, s]):>16.3f}' for m in METHODS for s in sizes))
    if phases.missing:
        print(f'  not timed (absent from this version of the code): '
              f'{", ".join(phases.missing)}')

    print('\nwhat the next disk would do after ordinary removals (explain):')
    for line in res['explain']:
        print(f'  {line}')


if __name__ == '__main__':
    sys.exit(main())
