"""Benchmark: iscsi_cor's readable disk, first/second touch and lun_fill, against the
bare qemu calls and full copies of the same image.

    .venv/bin/python -m bench.bench_iscsi_cor [--sizes 1,10] [--rounds 7]
                     [--copy-rounds 3] [--big-copy-rounds 1] [--anatomy-sizes 1]
                     [--run-dir DIR]
    .venv/bin/python -m bench.bench_iscsi_cor --sizes-mib 8,16 --rounds 1 \\
                     --copy-rounds 1                         # the smoke test's run

The issue: for 1 and 10 GiB images, in one run, the time from the handler call to a
readable disk against a full copy and against a bare ``qemu-img create -b
iscsi://...``; first-touch and second-touch read throughput; the fill's throughput
against ``qemu-img convert`` from the same LUN. Goals: time to a readable disk flat
as the image grows and <= 2x the bare create; fill >= 0.9x ``qemu-img convert``.

The lab, its own (IH_LAB_RUN_DIR is set to --run-dir, default a fresh directory
under .lab/, before tools.lab is imported; everything in it is stopped and removed at
the end, also on failure): a tgt (the userspace iSCSI target) on loopback and a Glance
("glance-bench-iscsi", fs store). Per size, one image:

- a Glance record with a 4 KiB placeholder uploaded through Glance's API, whose file
  in the fs store is then filled in place with the full size (a 64 MiB random block,
  each repetition stamped with its index: nothing sparse, nothing dedupable), and
  whose record's size, virtual_size, checksum (md5) and os_hash_value (sha512) are
  set in Glance's database to that data's, hashed while writing: the record an
  upload makes, without ~100 s of uploading 10 GiB through this lab's Glance. The
  hash is the file's real one, so every verification below is a real one;
- that very file exported read-only by tgt as LUN 1 (serial = the image id), and an
  ``iscsi://`` location row added to the record in Glance's database beside the
  file one (Glance's API refuses the scheme; operators publish LUNs so). iscsi_cor
  reads the LUN; Glance's data API (the full stream_copy) still serves the file.

The target serves the LUN from its page cache (the file is kept resident: checked
with mincore and re-read when evicted, before every run that reads the LUN), so the
LUN side runs at what tgt and libiscsi do over loopback, not at this VM's disk;
every local write (overlays, fills, convert targets, stream_copy) goes to the disk
with O_DIRECT (qemu ``cache=none``, stream_copy's direct I/O), so the page cache
keeps holding the LUNs. Reads of a local overlay (second touch) come from the disk.

Measured, medians of interleaved rounds (sizes interleaved; the order of the calls
alternates or rotates each round). The heavy runs (touches, fills, copies) get
--copy-rounds rounds below 4 GiB and --big-copy-rounds from 4 GiB up: one 10 GiB
fill takes 1.5-2 minutes here, and the whole run stays near 10 minutes:

- time to a readable disk: ``api.fetch(conf, ID, DISK, disk_format='qcow2')`` in this
  process, through the real chain (handlers = iscsi_cor; Glance's record and
  locations API included), and iscsi_cor's own decide + act timed by wrapping the
  real methods in place; against ``qemu-img create -f qcow2 -F raw -b URL -u DISK
  SIZE`` and the same without ``-u`` (which opens the LUN). The fetch starts a
  lun_fill job: here it is cancelled right after the fetch returns and its worker is
  waited for (gone) before anything else runs, so the readiness rounds measure the
  disk alone. Against full copies: stream_copy from Glance's data API (sha512
  verified) and ``qemu-img convert`` of the LUN into a local qcow2;
- first and second touch: qemu-io on a fresh disk from the handler with
  copy-on-read (``-C -t none``), the whole disk in 64 MiB reads: the first pass
  reads the LUN and writes every block into the overlay, the second reads it
  locally; also the same reads without copy-on-read (the LUN read through, no
  write), to split the first touch into reading and filling;
- the fill: a fetch whose lun_fill job runs (offline: qemu-nbd with the
  copy-on-read filter, read by libnbd, hashed), from the job's creation to its end
  as the job records them (worker start, fill, ``qemu-img rebase -b ''``, verdict):
  verified (the image's file in state_dir/lun-verdicts removed first: the job
  hashes the LUN) and not (the verdict recorded by an earlier fill: no hash); against ``qemu-img convert -t none`` from the LUN
  into a local qcow2 (the same work: every byte from the LUN onto the local disk,
  unverified), into qemu's null-co driver (the LUN read alone) and hashlib's sha512
  on one core (bench.common.hashlib_speed);
- where the fill's time goes: one more verified fill (of the --anatomy-sizes,
  default the smallest) run in this process (``runner.run``, the worker's body) with
  the real calls wrapped in place; beside it, the fill's own qemu-nbd (copy-on-read
  filter) on a fresh overlay read by libnbd with 1 and 4 requests in flight and
  nothing hashed, and qemu-nbd on the LUN itself (read-only): what the pipeline
  gives without the job's loop, and without the copy-on-read writes.

Two vCPUs here, shared with whatever else runs: the load average is printed.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import ctypes
import hashlib
import io
import json
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

from bench.common import hashlib_speed, prime_memory  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20
TOUCH_READ = 64 * MiB           # qemu-io read size for the touches
RATIO_GOAL = 2.0                # readable disk <= 2x the bare create
FLAT_GOAL = 1.5                 # t(largest) / t(smallest); a linear cost gives ~10
FILL_GOAL = 0.9                 # fill throughput >= 0.9x qemu-img convert
HANDLER = 'iscsi_cor decide + act'
GLANCE_PHASE = 'Glance: record + locations API'
CHAIN_PHASE = 'chain setup (handlers, conf)'
DECIDE, ACT = 'iscsi_cor decide', 'iscsi_cor act'
BIG = 4 * GiB                 # sizes from here on get --big-copy-rounds
PIPELINE_DEPTHS = (1, 4)      # requests in flight, for the fill's reference reads
HEAVY = ('touch', 'no-COR read', 'convert null-co', 'convert file', 'fill verified',
         'fill unverified', 'stream_copy')


def label(size: int) -> str:
    return f'{size // GiB} GiB' if size % GiB == 0 else f'{size // MiB} MiB'


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float('nan')


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float('nan')


def mark(ok: bool) -> str:
    return 'MET' if ok else 'MISSED'


def rate(size: int, seconds: float) -> float:
    """MiB/s."""
    return size / seconds / MiB if seconds > 0 else float('nan')


def sh(argv: list[str], what: str) -> float:
    """Run a command; its wall time in seconds (it must succeed)."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f'{what}: {" ".join(argv)[:300]} failed ({proc.returncode}): '
                           f'{proc.stderr.strip()[-1500:]}')
    return seconds


# -- the LUN files in the target's page cache ------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)


def resident(path: str) -> float:
    """Fraction of the file's pages in the page cache (mincore)."""
    size = os.path.getsize(path)
    page = mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f'mmap of {path}')
        try:
            pages = (size + page - 1) // page
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec):
                raise OSError(ctypes.get_errno(), f'mincore of {path}')
            return (pages - bytes(vec).count(0)) / pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fill_file(path: str, size: int) -> tuple[str, str]:
    """Write ``size`` bytes of incompressible data over ``path`` (in place, through
    the page cache, fsynced); (md5, sha512) computed on the way in two threads."""
    chunk = 64 * MiB
    buf = mmap.mmap(-1, chunk)
    buf[:] = os.urandom(chunk)
    md5, sha = hashlib.md5(), hashlib.sha512()
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
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


# -- timing the real calls in place ----------------------------------------------------

class Wrapped:
    """Wraps named callables in place and sums their time per label."""

    def __init__(self, spec) -> None:
        self.current: collections.Counter = collections.Counter()
        self.missing: list[str] = []
        self.labels = [lbl for lbl, _o, _a in spec]
        for lbl, owner, attr in spec:
            func = getattr(owner, attr, None)
            if func is None:
                self.missing.append(f'{lbl} ({attr})')
                continue
            setattr(owner, attr, self._wrap(lbl, func))

    def _wrap(self, name: str, func):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.current[name] += time.perf_counter() - t0
        timed.__wrapped__ = func
        return timed

    def start(self) -> None:
        self.current.clear()


class FetchPhases(Wrapped):
    """The parts of one fetch: TOP ones do not nest, STEPS run inside decide/act."""

    def __init__(self) -> None:
        from image_handlers.chain import HandlerChain
        from image_handlers.glance import GlanceReader
        from image_handlers.handlers import iscsi_cor
        from image_handlers.iscsi import probe
        from image_handlers.iscsi.verdicts import LunVerdicts
        from image_handlers.jobs import runner
        from image_handlers.qemu import img
        from image_handlers.targets import FileTarget
        self.top = ((CHAIN_PHASE, HandlerChain, '__init__'),
                    ('Glance client setup (keystoneauth)', GlanceReader, '__init__'),
                    (GLANCE_PHASE, GlanceReader, 'get_image'),
                    ('target checks (check_writable)', FileTarget, 'check_writable'),
                    (DECIDE, iscsi_cor.IscsiCorHandler, 'decide'),
                    (ACT, iscsi_cor.IscsiCorHandler, 'act'),
                    ('log the result (_log_used)', HandlerChain, '_log_used'))
        self.steps = (
            ('probe (portal, qemu-img info, serial)', probe, 'probe'),
            ('  portal accepts a connection (reachable)', probe, 'reachable'),
            ('  LUN serial (iscsi-inq)', probe, '_serial'),
            ('verdict lookups (refused, verified)', LunVerdicts, '_load'),
            ('qemu-img create -u (create_overlay)', img, 'create_overlay'),
            ('publish the overlay (tmp, link)', iscsi_cor, 'publish_new'),
            ('start the fill job (runner.submit)', runner, 'submit'),
            ('  spawn its worker (Popen)', runner, 'spawn'))
        super().__init__(self.top + self.steps)
        self.samples: dict[str, dict[str, list[float]]] = collections.defaultdict(
            lambda: collections.defaultdict(list))

    def stop(self, key: str, total: float) -> None:
        got = self.samples[key]
        got['total'].append(total)
        for name in self.labels:
            got[name].append(self.current[name])
        probe_rest = (self.current['probe (portal, qemu-img info, serial)']
                      - self.current['  portal accepts a connection (reachable)']
                      - self.current['  LUN serial (iscsi-inq)'])
        got['  qemu-img info of the LUN (the rest of probe)'].append(probe_rest)
        top = sum(self.current[name] for name, _o, _a in self.top)
        got['other (chain walk, results, logging)'].append(total - top)
        got[HANDLER].append(self.current[DECIDE] + self.current[ACT])


class TimedHash:
    """A hash object whose update() is timed (the fill's sink, in the anatomy run)."""

    def __init__(self, inner, counter: collections.Counter, name: str) -> None:
        self._inner, self._counter, self._name = inner, counter, name

    def update(self, data) -> None:
        t0 = time.perf_counter()
        self._inner.update(data)
        self._counter[self._name] += time.perf_counter() - t0

    def hexdigest(self) -> str:
        return self._inner.hexdigest()


class FillAnatomy(Wrapped):
    """The calls of a lun_fill job run in this process (runner.run)."""

    HASH = 'sha512 of every chunk (hasher.update)'

    def __init__(self) -> None:
        import nbd
        from image_handlers.copy.checksum import Checksum
        from image_handlers.iscsi import fill, reader
        from image_handlers.iscsi.verdicts import LunVerdicts
        from image_handlers.jobs.store import JobStore
        from image_handlers.qemu import img
        spec = (
            ('qemu-nbd start (socket activation, COR filter)', nbd.NBD,
             'connect_systemd_socket_activation'),
            ('NBD reads, 4 MiB each (LUN read + COR write in qemu-nbd)', reader,
             '_pread'),
            ('  copy out of the NBD buffer (to_bytearray)', nbd.Buffer, 'to_bytearray'),
            ('job record saves (progress, fsync each chunk)', JobStore, 'save'),
            ('job record reads (cancel check each chunk)', JobStore, 'get'),
            ('disk in use? (qemu-img info)', img, 'in_use'),
            ('NBD shutdown', nbd.NBD, 'shutdown'),
            ('qemu-img rebase -b "" (make_standalone)', img, 'make_standalone'),
            ('verdict lookup and record', LunVerdicts, '_load'),
        )
        super().__init__(spec)
        self.labels.insert(3, self.HASH)
        counter_owner = self
        original_new = Checksum.new

        def new(checksum):
            return TimedHash(original_new(checksum), counter_owner.current,
                             FillAnatomy.HASH)
        self._fill_module = fill
        self._checksum_new = original_new
        self._timed_new = new
        self.samples: dict[int, dict[str, float]] = {}

    def run(self, conf, job_id: str, size: int) -> float:
        from image_handlers.copy.checksum import Checksum
        from image_handlers.jobs import runner
        Checksum.new = self._timed_new
        self.start()
        t0 = time.perf_counter()
        try:
            job = runner.run(conf, job_id)
        finally:
            Checksum.new = self._checksum_new
        total = time.perf_counter() - t0
        if job.state != 'done' or 'hashed by this job' not in str(
                job.result.get('verified')):
            raise RuntimeError(f'in-process fill: {job.state} {job.error} {job.result}')
        got = {name: self.current[name] for name in self.labels}
        got['total'] = total
        self.samples[size] = got
        return total


# -- the images ------------------------------------------------------------------------

class Image:
    def __init__(self, size: int) -> None:
        self.size = size
        self.id = self.path = self.url = self.export = ''
        self.md5 = self.sha512 = ''


class Bench:
    def __init__(self, args, work: Path, glance, tgt) -> None:
        from image_handlers import api
        self.api = api
        self.args, self.work, self.glance, self.tgt = args, work, glance, tgt
        self.client = glance.client()
        self.state = work / 'state'
        self.disks = work / 'instances'
        self.disks.mkdir()
        self.images: list[Image] = []
        self.conf_paths = {}
        self.confs = {'cor': self._conf('cor', 'iscsi_cor'),
                      'copy': self._conf('copy', 'stream_copy')}
        self.resident_before: list[float] = []      # LUN residency before LUN reads
        self.rewarmed = 0
        self.prefilled: list[int] = []               # bytes a cancelled job filled
        self.worker_life: list[float] = []           # cancelled workers: spawn to exit
        self.notes: list[str] = []
        self.anatomy_sizes: set[int] = set()

    def _conf(self, name: str, handlers: str):
        path = self.work / f'nova-{name}.conf'
        path.write_text(
            self.glance.nova_conf()
            + f'\n[image_handlers]\nstate_dir = {self.state}\nhandlers = {handlers}\n'
            + f'iscsi_allowed_portals = {self.tgt.portal}\niscsi_timeout = 10\n'
            + 'progress_interval = 3600\nprefer_measured_throughput = false\n')
        self.conf_paths[name] = str(path)
        return self.api.make_conf([str(path)])

    def _db(self):
        return sqlite3.connect(self.glance.workdir / 'glance.sqlite')

    def make_image(self, size: int) -> Image:
        image = Image(size)
        self.images.append(image)
        rec = self.client.images.create(name=f'bench-iscsi-{label(size)}',
                                        disk_format='raw', container_format='bare')
        image.id = rec['id']
        self.client.images.upload(image.id, io.BytesIO(b'\x01' * 4096),
                                  image_size=4096)
        (loc,) = self.client.images.get(image.id)['locations']
        assert loc['url'].startswith('file://'), loc
        image.path = loc['url'][len('file://'):]
        image.md5, image.sha512 = fill_file(image.path, size)
        name = f'bench-{label(size).replace(" ", "").lower()}'
        export = self.tgt.export(name, image.path, serial=image.id)
        image.export, image.url = name, export.url
        db = self._db()
        try:
            with db:
                db.execute('update images set size = ?, virtual_size = ?, checksum = ?, '
                           'os_hash_algo = ?, os_hash_value = ? where id = ?',
                           (size, size, image.md5, 'sha512', image.sha512, image.id))
                row = db.execute('select status, created_at from image_locations '
                                 'where image_id = ? and deleted = 0',
                                 (image.id,)).fetchone()
                db.execute('insert into image_locations (image_id, value, meta_data, '
                           'status, created_at, deleted) values (?, ?, ?, ?, ?, ?)',
                           (image.id, image.url, '{}', row[0], row[1], 0))
        finally:
            db.close()
        rec = self.client.images.get(image.id)
        urls = sorted(loc['url'] for loc in rec['locations'])
        assert (rec['size'], rec['os_hash_value'], rec['status']) == (
            size, image.sha512, 'active') and image.url in urls, rec
        return image

    def warm(self, image: Image) -> None:
        """The LUN file resident in the target's page cache before a LUN read."""
        frac = resident(image.path)
        self.resident_before.append(frac)
        if frac < 0.999:
            self.rewarmed += 1
            fd = os.open(image.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                buf = bytearray(16 * MiB)
                while os.readv(fd, [buf]):
                    pass
            finally:
                os.close(fd)

    def _disk(self, tag: str) -> str:
        return str(self.disks / f'{tag}-{uuid.uuid4().hex[:8]}.qcow2')

    # -- jobs --------------------------------------------------------------------------

    def _jobs(self):
        from image_handlers.jobs.store import JobStore
        return JobStore(str(self.state))

    @staticmethod
    def worker_pids(job_id: str) -> list[int]:
        pids = []
        for entry in os.listdir('/proc'):
            if not entry.isdigit():
                continue
            try:
                with open(f'/proc/{entry}/cmdline', 'rb') as f:
                    cmd = f.read()
            except OSError:
                continue
            if b'image_handlers.jobs.worker' in cmd and job_id.encode() in cmd:
                pids.append(int(entry))
        return pids

    def wait_worker_gone(self, job_id: str, timeout: float = 60) -> float:
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        while self.worker_pids(job_id):
            if time.monotonic() > deadline:
                raise RuntimeError(f'worker of job {job_id} still there after '
                                   f'{timeout} s')
            time.sleep(0.005)
        return time.perf_counter() - t0

    def wait_job(self, job_id: str, timeout: float = 1800):
        """Poll the record (never the lock: probing it could race the worker's start)."""
        jobs = self._jobs()
        deadline = time.monotonic() + timeout
        while True:
            job = jobs.get(job_id)
            if job.finished:
                self.wait_worker_gone(job_id)
                return job
            if time.monotonic() > deadline:
                raise RuntimeError(f'job {job_id} still {job.state} after {timeout} s')
            time.sleep(0.02)

    # -- readiness ---------------------------------------------------------------------

    def fetch(self, image: Image, phases: FetchPhases | None, key: str | None,
              keep: bool = False) -> tuple[float, str]:
        """A disk from the handler; its job cancelled at once and its worker waited
        for. Returns (seconds, disk path, removed unless ``keep``)."""
        from image_handlers.jobs import runner
        disk = self._disk('cor')
        if phases:
            phases.start()
        t0 = time.perf_counter()
        result = self.api.fetch(self.confs['cor'], image.id, disk, disk_format='qcow2')
        seconds = time.perf_counter() - t0
        spawned = time.perf_counter()
        runner.cancel(self.confs['cor'], result.job)
        if phases and key:
            phases.stop(key, seconds)
        assert (result.handler, result.method, result.bytes_copied, result.disk_format
                ) == ('iscsi_cor', 'overlay', 0, 'qcow2'), result.to_dict()
        job = self.wait_job(result.job, timeout=120)
        self.worker_life.append(time.perf_counter() - spawned)
        if job.state != 'cancelled':
            self.notes.append(f'readiness job {job.id} ended {job.state}: {job.error}')
        self.prefilled.append(job.done_bytes)
        if not keep:
            os.unlink(disk)
        return seconds, disk

    def bare_create(self, image: Image, unsafe: bool) -> float:
        disk = self._disk('bare')
        argv = ['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', image.url,
                *(['-u'] if unsafe else []), disk, str(image.size)]
        seconds = sh(argv, 'bare create')
        os.unlink(disk)
        return seconds

    def check_readable(self, image: Image) -> str:
        """A fresh disk reads the image's bytes (first and last 4 MiB), untimed."""
        import nbd
        _s, disk = self.fetch(image, None, None, keep=True)
        h = nbd.NBD()
        try:
            h.connect_systemd_socket_activation(
                ['qemu-nbd', '--read-only', '-f', 'qcow2', disk])
            n = min(4 * MiB, image.size)
            with open(image.path, 'rb') as f:
                for off in {0, image.size - n}:
                    f.seek(off)
                    if h.pread(n, off) != f.read(n):
                        raise RuntimeError(f'{disk} does not read the image at {off}')
            h.shutdown()
        finally:
            del h
            os.unlink(disk)
        return f'{label(image.size)}: first and last {label(n)} read equal the image'

    # -- touches -----------------------------------------------------------------------

    def _reads(self, size: int) -> list[str]:
        cmds = []
        for off in range(0, size, TOUCH_READ):
            cmds += ['-c', f'read -q {off} {min(TOUCH_READ, size - off)}']
        return cmds

    def touches(self, image: Image) -> tuple[float, float]:
        """First touch (copy-on-read from the LUN) and second touch (local) of a
        fresh disk from the handler."""
        _s, disk = self.fetch(image, None, None, keep=True)
        try:
            self.warm(image)
            prime_memory(512 * MiB)
            first = sh(['qemu-io', '-C', '-t', 'none', '-f', 'qcow2',
                        *self._reads(image.size), disk], 'first touch')
            allocated = json.loads(subprocess.run(
                ['qemu-img', 'map', '--output=json', '-U', disk], capture_output=True,
                text=True, check=True).stdout)
            local = sum(e['length'] for e in allocated if e.get('depth') == 0
                        and e.get('data'))
            if local < image.size:
                self.notes.append(f'first touch of {label(image.size)} left '
                                  f'{image.size - local} bytes unfilled')
            second = sh(['qemu-io', '-C', '-t', 'none', '-f', 'qcow2',
                         *self._reads(image.size), disk], 'second touch')
        finally:
            os.unlink(disk)
        return first, second

    def no_cor_read(self, image: Image) -> float:
        """The same reads through a bare overlay without copy-on-read: the LUN read."""
        disk = self._disk('nocor')
        sh(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', image.url, '-u',
            disk, str(image.size)], 'create')
        try:
            self.warm(image)
            prime_memory(512 * MiB)
            return sh(['qemu-io', '-t', 'none', '-f', 'qcow2', *self._reads(image.size),
                       disk], 'read without copy-on-read')
        finally:
            os.unlink(disk)

    # -- fills and copies --------------------------------------------------------------

    def forget_verdict(self, image: Image) -> None:
        """The LUN no longer known verified: the next fill hashes it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state / 'lun-verdicts' / f'{image.id}.json')

    def fill(self, image: Image, verify: bool) -> tuple[float, float]:
        """A fetch whose lun_fill runs: (fill seconds as the job records them,
        fetch seconds)."""
        if verify:
            self.forget_verdict(image)
        self.warm(image)
        prime_memory(512 * MiB)
        disk = self._disk('fill')
        t0 = time.perf_counter()
        result = self.api.fetch(self.confs['cor'], image.id, disk, disk_format='qcow2')
        fetch_s = time.perf_counter() - t0
        try:
            job = self.wait_job(result.job)
            want = 'LUN read and hashed by this job' if verify else 'LUN verified before'
            if job.state != 'done' or want not in str(job.result.get('verified')):
                raise RuntimeError(f'fill of {label(image.size)}: {job.state} '
                                   f'{job.error} {job.result}')
            info = json.loads(subprocess.run(['qemu-img', 'info', '--output=json', disk],
                                             capture_output=True, text=True,
                                             check=True).stdout)
            assert 'backing-filename' not in info, info
            assert job.result.get('mode') == 'offline', job.result
            return job.updated - job.created, fetch_s
        finally:
            os.unlink(disk)

    def fill_in_process(self, image: Image, anatomy: FillAnatomy) -> float:
        """One verified fill run by runner.run in this process, calls timed."""
        from image_handlers.jobs import runner
        self.forget_verdict(image)
        self.warm(image)
        prime_memory(512 * MiB)
        disk = self._disk('anatomy')
        spawn = runner.spawn
        runner.spawn = lambda conf, job: None       # no worker: run it right here
        try:
            result = self.api.fetch(self.confs['cor'], image.id, disk,
                                    disk_format='qcow2')
        finally:
            runner.spawn = spawn
        try:
            return anatomy.run(self.confs['cor'], result.job, image.size)
        finally:
            os.unlink(disk)

    def nbd_pipelined(self, image: Image, depth: int, cor: bool = True) -> float:
        """The fill's own qemu-nbd (copy-on-read filter, cache=none) on a fresh
        overlay, read by libnbd in 4 MiB requests with ``depth`` of them in flight,
        nothing hashed: what the same pipeline gives a reader that queues. Without
        ``cor``: qemu-nbd on the LUN itself, read-only (nothing written)."""
        import nbd
        from image_handlers.iscsi import reader
        from image_handlers.iscsi.lun import LunSpec
        disk = self._disk('nbd')
        sh(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', image.url, '-u',
            disk, str(image.size)], 'create')
        if cor:
            opts = ('driver=copy-on-read,file.driver=qcow2,file.file.driver=file,'
                    f'file.file.filename={disk}')
        else:
            export = self.tgt.exports()[image.export]
            opts = LunSpec(export.portal, export.iqn, export.lun).image_opts()
        try:
            self.warm(image)
            prime_memory(512 * MiB)
            with reader.served([], opts, read_only=not cor, description=disk) as h:
                t0 = time.perf_counter()
                free = [nbd.Buffer(reader.CHUNK) for _ in range(depth)]
                queue: collections.deque = collections.deque()
                offset = 0
                while offset < image.size or queue:
                    while offset < image.size and free:
                        buf = free.pop()
                        n = min(reader.CHUNK, image.size - offset)
                        if n < reader.CHUNK:
                            buf = nbd.Buffer(n)
                        queue.append((h.aio_pread(buf, offset), buf))
                        offset += n
                    cookie, buf = queue.popleft()
                    while not h.aio_command_completed(cookie):
                        h.poll(-1)
                    free.append(buf)
                return time.perf_counter() - t0
        finally:
            os.unlink(disk)

    def convert(self, image: Image, to: str) -> float:
        self.warm(image)
        prime_memory(512 * MiB)
        if to == 'null-co':
            return sh(['qemu-img', 'convert', '-n', '-f', 'raw', '--target-image-opts',
                       image.url, f'driver=null-co,size={image.size}'], 'convert null-co')
        out = self._disk('convert')
        try:
            return sh(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', '-t', 'none',
                       image.url, out], 'convert file')
        finally:
            os.unlink(out)

    def stream_copy(self, image: Image) -> float:
        target = str(self.disks / f'copy-{uuid.uuid4().hex[:8]}.raw')
        prime_memory(min(image.size, 2 * GiB) + 512 * MiB)
        t0 = time.perf_counter()
        result = self.api.fetch(self.confs['copy'], image.id, target)
        seconds = time.perf_counter() - t0
        try:
            assert (result.handler == 'stream_copy' and result.bytes_copied == image.size
                    and result.verified and result.location.startswith('glance:')), \
                result.to_dict()
        finally:
            os.unlink(target)
        return seconds

    # -- clean-up ----------------------------------------------------------------------

    def leftover_processes(self) -> list[int]:
        mine = str(self.work).encode()
        pids = []
        for entry in os.listdir('/proc'):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    with open(f'/proc/{entry}/cmdline', 'rb') as f:
                        if mine in f.read():
                            pids.append(int(entry))
                except OSError:
                    pass
        return pids

    def cleanup(self) -> list[str]:
        from image_handlers.jobs import runner
        left = []
        for job in self._jobs().all():
            if not job.finished:
                with contextlib.suppress(Exception):
                    runner.cancel(self.confs['cor'], job.id)
                with contextlib.suppress(Exception):
                    self.wait_job(job.id, timeout=30)
        for pid in self.leftover_processes():
            left.append(f'process {pid} still running from the work dir: killed')
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        for image in self.images:
            if image.export:
                try:
                    self.tgt.unexport(image.export)
                except Exception as exc:  # noqa: BLE001 - report, keep cleaning
                    left.append(f'export {image.export}: {exc}')
            if image.id:
                db = self._db()
                try:
                    with db:   # Glance cannot delete an iscsi location: drop the row
                        db.execute('delete from image_locations where image_id = ? and '
                                   'value like ?', (image.id, 'iscsi://%'))
                finally:
                    db.close()
                try:
                    self.client.images.delete(image.id)
                except Exception as exc:  # noqa: BLE001
                    left.append(f'Glance image {image.id}: {exc}')
                if image.path and os.path.exists(image.path):
                    left.append(f'{image.path} left in the Glance store')
        return left


# -- the run ---------------------------------------------------------------------------

def run(bench: Bench, sizes: list[int], args, phases: FetchPhases,
        anatomy: FillAnatomy) -> dict:
    res: dict = {key: collections.defaultdict(list) for key in (
        'fetch', 'bare_u', 'bare', 'first', 'second', 'nocor', 'null', 'file',
        'fill_v', 'fill_u', 'fill_fetch', 'copy')}
    res['hash'] = [hashlib_speed(512 * MiB if min(sizes) >= GiB else 64 * MiB)]
    res['readable'] = []
    # Warm-up (imports, connections, the first login to each target); checked reads.
    for image in bench.images:
        res['readable'].append(bench.check_readable(image))
        bench.fetch(image, None, None)
        bench.bare_create(image, True)
        bench.bare_create(image, False)
    # Time to a readable disk, interleaved; the order of the three alternates.
    for round_no in range(args.rounds):
        for image in bench.images:
            steps = [
                lambda: res['fetch'][image.size].append(
                    bench.fetch(image, phases, f'ready:{image.size}')[0]),
                lambda: res['bare_u'][image.size].append(bench.bare_create(image, True)),
                lambda: res['bare'][image.size].append(bench.bare_create(image, False))]
            for step in (steps if round_no % 2 == 0 else steps[::-1]):
                step()
    # The heavy runs, sizes interleaved, their order rotated each round.
    runs = {
        'touch': lambda im: [res[k][im.size].append(v) for k, v in
                             zip(('first', 'second'), bench.touches(im))],
        'no-COR read': lambda im: res['nocor'][im.size].append(bench.no_cor_read(im)),
        'convert null-co': lambda im: res['null'][im.size].append(
            bench.convert(im, 'null-co')),
        'convert file': lambda im: res['file'][im.size].append(
            bench.convert(im, 'file')),
        'fill verified': lambda im: _fill(bench, im, True, res),
        'fill unverified': lambda im: _fill(bench, im, False, res),
        'stream_copy': lambda im: res['copy'][im.size].append(bench.stream_copy(im)),
    }
    # An unverified fill needs the verdict: the first heavy run of each image is a
    # verified fill (counted in the verified medians).
    for image in bench.images:
        _fill(bench, image, True, res)
    order = list(HEAVY)
    for round_no in range(max(args.copy_rounds, args.big_copy_rounds)):
        turn = order[round_no % len(order):] + order[:round_no % len(order)]
        for image in bench.images:
            if round_no >= (args.big_copy_rounds if image.size >= BIG
                            else args.copy_rounds):
                continue
            for name in turn:
                if name == 'fill verified' and round_no == 0:
                    continue            # done above
                runs[name](image)
            res['hash'].append(hashlib_speed(512 * MiB if min(sizes) >= GiB
                                             else 64 * MiB))
    res['pipelined'] = collections.defaultdict(list)
    for image in bench.images:
        if image.size in bench.anatomy_sizes:
            bench.fill_in_process(image, anatomy)
            for depth in PIPELINE_DEPTHS:
                res['pipelined'][image.size, depth].append(
                    bench.nbd_pipelined(image, depth))
            res['pipelined'][image.size, 'lun'].append(
                bench.nbd_pipelined(image, 1, cor=False))
    return res


def _fill(bench: Bench, image: Image, verify: bool, res: dict) -> None:
    seconds, fetch_s = bench.fill(image, verify)
    res['fill_v' if verify else 'fill_u'][image.size].append(seconds)
    res['fill_fetch'][image.size].append(fetch_s)


def report(args, sizes, setup, fill_s, bench: Bench, phases: FetchPhases,
           anatomy: FillAnatomy, res, load_start) -> None:
    first, last = sizes[0], sizes[-1]
    hash_speed = med(res['hash'])
    print(f'\niscsi_cor benchmark: non-sparse images of '
          f'{", ".join(label(s) for s in sizes)} on a tgt LUN (loopback, served from '
          f'its page cache), {os.cpu_count()} CPUs, load average at start '
          f'{load_start:.2f}, at end {os.getloadavg()[0]:.2f}; medians of '
          f'{args.rounds} interleaved rounds (readable disk) and {args.copy_rounds} '
          f'(touches, fills, copies; {args.big_copy_rounds} from {label(BIG)} up)')
    print(f'setup {setup:.1f} s, of which writing the images (data, fsync, md5 + '
          f'sha512): ' + ', '.join(f'{label(s)} {fill_s[s]:.1f} s' for s in sizes))

    print('\ntime to a readable disk (median ms; full copies in s):')
    print(f'  {"size":>8}{"fetch":>9}{"handler":>9}{"create -u":>11}{"create":>9}'
          f'{"fetch/-u":>10}{"handler/-u":>12}{"fetch/create":>14}'
          f'{"stream_copy":>13}{"convert":>9}')
    for s in sizes:
        e, h = ms(res['fetch'][s]), ms(phases.samples[f'ready:{s}'][HANDLER])
        bu, b = ms(res['bare_u'][s]), ms(res['bare'][s])
        print(f'  {label(s):>8}{e:>9.1f}{h:>9.1f}{bu:>11.1f}{b:>9.1f}{e / bu:>10.2f}'
              f'{h / bu:>12.2f}{e / b:>14.2f}{med(res["copy"][s]):>12.2f}s'
              f'{med(res["file"][s]):>8.2f}s')
    print('  (fetch: api.fetch through the chain, Glance included; handler: '
          'iscsi_cor decide + act; create -u: bare qemu-img create -u, the LUN not '
          'opened; create: the same opening the LUN; stream_copy: full copy from '
          'Glance\'s data API, sha512 verified; convert: qemu-img convert of the LUN '
          'into a local qcow2)')

    print('\nfirst and second touch (qemu-io, whole disk in 64 MiB reads, -t none), '
          'median s and MiB/s:')
    print(f'  {"size":>8}{"1st touch (COR)":>20}{"2nd touch":>18}{"LUN, no COR":>18}'
          f'{"convert null-co":>20}{"1st/no-COR":>12}')
    for s in sizes:
        f1, f2, nc = med(res['first'][s]), med(res['second'][s]), med(res['nocor'][s])
        nu = med(res['null'][s])
        print(f'  {label(s):>8}{f1:>9.2f} s{rate(s, f1):>6.0f}/s{f2:>8.2f} s'
              f'{rate(s, f2):>6.0f}/s{nc:>8.2f} s{rate(s, nc):>6.0f}/s'
              f'{nu:>9.2f} s{rate(s, nu):>7.0f}/s{f1 / nc:>12.2f}')
    if bench.prefilled and max(bench.prefilled) > 0:
        print(f'  (a job cancelled at once had filled up to {max(bench.prefilled)} '
              f'bytes of its disk)')

    print(f'\nfill (lun_fill job, offline; from its creation to its end as the job '
          f'records them), median s and MiB/s; hashlib sha512 on one core '
          f'{hash_speed / MiB:.0f} MiB/s:')
    print(f'  {"size":>8}{"fill, verified":>19}{"fill, verdict":>19}'
          f'{"convert -> qcow2":>20}{"convert -> null":>19}{"sha512 alone":>15}')
    for s in sizes:
        v, u = med(res['fill_v'][s]), med(res['fill_u'][s])
        cf, cn = med(res['file'][s]), med(res['null'][s])
        hs = s / hash_speed
        print(f'  {label(s):>8}{v:>8.2f} s{rate(s, v):>6.0f}/s{u:>8.2f} s'
              f'{rate(s, u):>6.0f}/s{cf:>9.2f} s{rate(s, cf):>6.0f}/s{cn:>8.2f} s'
              f'{rate(s, cn):>6.0f}/s{hs:>8.2f} s')
    print('  (verified: no verdict, the job hashes the LUN; verdict: the LUN verified '
          'before, no hash; convert -> qcow2: qemu-img convert -t none from the LUN '
          'into a local qcow2, the same bytes moved, unverified; convert -> null: the '
          'LUN read alone)')

    print('\ngoals:')
    for s in sizes:
        e, bu = ms(res['fetch'][s]), ms(res['bare_u'][s])
        h = ms(phases.samples[f'ready:{s}'][HANDLER])
        print(f'  readable disk {label(s):>7}: whole fetch / bare qemu-img create -u = '
              f'{e / bu:.2f} [<= {RATIO_GOAL:g}] {mark(e / bu <= RATIO_GOAL)}; handler '
              f'decide+act / bare create -u = {h / bu:.2f} [<= {RATIO_GOAL:g}] '
              f'{mark(h / bu <= RATIO_GOAL)}; against the bare create that opens the '
              f'LUN: whole fetch {e / ms(res["bare"][s]):.2f}, handler '
              f'{h / ms(res["bare"][s]):.2f}')
    if len(sizes) > 1:
        fe = ms(res['fetch'][last]) / ms(res['fetch'][first])
        fh = (ms(phases.samples[f'ready:{last}'][HANDLER])
              / ms(phases.samples[f'ready:{first}'][HANDLER]))
        fb = ms(res['bare_u'][last]) / ms(res['bare_u'][first])
        fc = med(res['copy'][last]) / med(res['copy'][first])
        print(f'  flatness, t({label(last)}) / t({label(first)}) [<= {FLAT_GOAL:g}; a '
              f'cost growing with the size would give {last / first:.0f}]: whole fetch '
              f'{fe:.2f} {mark(fe <= FLAT_GOAL)}; handler {fh:.2f} '
              f'{mark(fh <= FLAT_GOAL)}; bare create -u {fb:.2f}; stream_copy {fc:.2f}')
    for s in sizes:
        cf = med(res['file'][s])
        for name, key in (('verified fill', 'fill_v'), ('fill with verdict', 'fill_u')):
            t = med(res[key][s])
            r = cf / t
            print(f'  fill {label(s):>7}: {name} / qemu-img convert -> qcow2 = {r:.2f} '
                  f'[>= {FILL_GOAL:g}] {mark(r >= FILL_GOAL)} (against convert -> '
                  f'null-co: {med(res["null"][s]) / t:.2f})')
    for s in sizes:
        e = ms(res['fetch'][s])
        print(f'  {label(s):>7}: a readable disk {med(res["copy"][s]) * 1000 / e:.0f}x '
              f'sooner than stream_copy, {med(res["file"][s]) * 1000 / e:.0f}x sooner '
              f'than qemu-img convert; first touch at '
              f'{med(res["nocor"][s]) / med(res["first"][s]):.2f}x the LUN read-through')

    print('\nwhere a readable disk\'s time goes (median ms per fetch, the real calls '
          'timed in place):')
    print(f'  {"phase":<50}' + ''.join(f'{label(s):>10}' for s in sizes))
    rows = ([n for n, _o, _a in phases.top] + ['other (chain walk, results, logging)',
                                               'total'])
    steps = [n for n, _o, _a in phases.steps]
    steps.insert(3, '  qemu-img info of the LUN (the rest of probe)')
    top = len(phases.top)
    for name in rows[:top] + ['  of which, inside decide and act:'] + steps + rows[top:]:
        if name.startswith('  of which'):
            print(name)
            continue
        indent = '    ' if name in steps else '  '
        print(f'{indent}{name:<{52 - len(indent)}}' + ''.join(
            f'{ms(phases.samples[f"ready:{s}"][name]):>10.2f}' for s in sizes))
    for key, text in (('bare_u', 'bare qemu-img create -u, for reference'),
                      ('bare', 'bare qemu-img create (LUN opened)')):
        print(f'  {text:<50}' + ''.join(f'{ms(res[key][s]):>10.2f}' for s in sizes))
    print(f'  the job\'s worker, its job cancelled at once: from the fetch\'s return '
          f'to its exit, median {ms(bench.worker_life):.0f} ms (not in the fetch: it '
          f'runs detached)')
    if phases.missing:
        print(f'  not timed (absent from this version): {", ".join(phases.missing)}')

    done = [s for s in sizes if s in anatomy.samples]
    print('\nwhere a verified fill\'s time goes (one more verified fill of '
          f'{", ".join(label(s) for s in done)} run by runner.run in this process, '
          'the real calls timed in place; s):')
    print(f'  {"call":<58}' + ''.join(f'{label(s):>10}' for s in done))
    for name in anatomy.labels + ['total']:
        print(f'  {name:<58}' + ''.join(
            f'{anatomy.samples[s].get(name, 0.0):>10.2f}' for s in done))
    outer = [n for n in anatomy.labels if not n.startswith('  ')]
    rest = {s: anatomy.samples[s]['total'] - sum(anatomy.samples[s][n] for n in outer)
            for s in done}
    print(f'  {"other (the loop, handover checks, logging)":<58}' + ''.join(
        f'{rest[s]:>10.2f}' for s in done))
    for s in done:
        a = anatomy.samples[s]
        reads = a['NBD reads, 4 MiB each (LUN read + COR write in qemu-nbd)']
        hashing = a[FillAnatomy.HASH]
        print(f'  {label(s)}: reads at {rate(s, reads):.0f} MiB/s and hashing at '
              f'{rate(s, hashing):.0f} MiB/s, one after the other (one request in '
              f'flight, hashed before the next is sent): read + hash = '
              f'{reads + hashing:.2f} s of {a["total"]:.2f} s; the same fill as a '
              f'detached job: {med(res["fill_v"][s]):.2f} s (median)')
        refs = '; '.join(
            f'{d} in flight {rate(s, med(res["pipelined"][s, d])):.0f} MiB/s'
            for d in PIPELINE_DEPTHS if res['pipelined'].get((s, d)))
        lun = rate(s, med(res['pipelined'].get((s, 'lun'), [])))
        print(f'  {label(s)}: the fill\'s qemu-nbd (copy-on-read, cache=none) on a fresh '
              f'overlay read by libnbd in 4 MiB requests, nothing hashed: {refs}; '
              f'qemu-nbd on the LUN itself (read-only, nothing written), 1 in flight: '
              f'{lun:.0f} MiB/s; qemu-img convert -> qcow2 '
              f'{rate(s, med(res["file"][s])):.0f} MiB/s')
    if anatomy.missing:
        print(f'  not timed (absent from this version): {", ".join(anatomy.missing)}')

    print('\nchecks:')
    for line in res['readable']:
        print(f'  readable at once: {line}')
    lo = min(bench.resident_before) if bench.resident_before else float('nan')
    print(f'  LUN files resident in the page cache before the runs that read them: '
          f'min {lo * 100:.1f} %, re-read {bench.rewarmed} time(s) before a run')
    for note in bench.notes:
        print(f'  NOTE: {note}')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='1,10', help='image sizes in GiB')
    parser.add_argument('--sizes-mib', default=None,
                        help='image sizes in MiB instead (a quick smoke run)')
    parser.add_argument('--rounds', type=int, default=7,
                        help='interleaved rounds of the readable disk (median)')
    parser.add_argument('--copy-rounds', type=int, default=3,
                        help='rounds of touches, fills and full copies (median)')
    parser.add_argument('--big-copy-rounds', type=int, default=1,
                        help='the same for images of 4 GiB and more (a 10 GiB fill '
                             'takes minutes here)')
    parser.add_argument('--anatomy-sizes', default=None,
                        help='sizes (as --sizes or --sizes-mib) whose fill is also run '
                             'in this process, calls timed (default: the smallest)')
    parser.add_argument('--run-dir', default=None,
                        help='the lab run dir, for its services and work dir '
                             '(default: a fresh directory under .lab/)')
    args = parser.parse_args()
    if args.sizes_mib:
        sizes = [int(s) * MiB for s in args.sizes_mib.split(',') if s.strip()]
    else:
        sizes = [int(s) * GiB for s in args.sizes.split(',') if s.strip()]
    sizes.sort()
    unit = MiB if args.sizes_mib else GiB
    anatomy_sizes = ({int(s) * unit for s in args.anatomy_sizes.split(',') if s.strip()}
                     if args.anatomy_sizes else {sizes[0]})
    if not sizes or min(sizes) <= 0 or min(args.rounds, args.copy_rounds,
                                           args.big_copy_rounds) < 1:
        parser.error('sizes and rounds must be positive')
    if any(s % (4 * MiB) for s in sizes):
        parser.error('sizes must be multiples of 4 MiB')
    own_dir = args.run_dir is None
    run_dir = Path(args.run_dir or tempfile.mkdtemp(
        prefix='bench-iscsi-', dir=os.path.join(REPO, '.lab')))
    run_dir.mkdir(parents=True, exist_ok=True)
    need = sum(sizes) + 2 * max(sizes) + 2 * GiB    # images, a disk and a copy at once
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise SystemExit(f'{run_dir}: {free // GiB} GiB free, the run needs about '
                         f'{need // GiB + 1} GiB')
    os.environ['IH_LAB_RUN_DIR'] = str(run_dir)     # before tools.lab is imported
    from tools.lab import GlanceService, TgtService
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix='work-', dir=run_dir))
    tgt = glance = bench = None
    left: list[str] = []
    t_setup = time.perf_counter()
    try:
        tgt = TgtService('tgt-bench-iscsi', run_dir=run_dir).start()
        glance = GlanceService(name='glance-bench-iscsi', run_dir=run_dir).start()
        phases, anatomy = FetchPhases(), FillAnatomy()
        bench = Bench(args, work, glance, tgt)
        bench.anatomy_sizes = anatomy_sizes
        fill_s = {}
        for size in sizes:
            t0 = time.perf_counter()
            bench.make_image(size)
            fill_s[size] = time.perf_counter() - t0
        setup = time.perf_counter() - t_setup
        res = run(bench, sizes, args, phases, anatomy)
        report(args, sizes, setup, fill_s, bench, phases, anatomy, res, load_start)
    finally:
        if bench is not None:
            try:
                left += bench.cleanup()
            except Exception as exc:  # noqa: BLE001 - keep stopping the lab
                left.append(f'cleanup failed: {exc!r}')
        for svc in (glance, tgt):
            if svc is not None:
                try:
                    svc.stop()
                except Exception as exc:  # noqa: BLE001
                    left.append(f'{svc.name}: {exc}')
        shutil.rmtree(work, ignore_errors=True)
        if work.exists():
            left.append(f'{work} not removed')
        leftovers = [p.name for p in run_dir.iterdir()] if run_dir.exists() else []
        if leftovers:
            left.append(f'{run_dir} still holds {", ".join(leftovers)}')
        elif own_dir:
            run_dir.rmdir()
        print(f'\ntotal run time {time.perf_counter() - t_setup:.0f} s')
        if left:
            print('NOT removed:', '; '.join(left))
        else:
            print('every disk, job, image, export and file created was removed; lab '
                  'stopped')
    return 1 if left else 0


if __name__ == '__main__':
    sys.exit(main())
