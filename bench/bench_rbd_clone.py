"""Benchmark: rbd_clone end to end against a bare librbd clone, and full copies.

    .venv/bin/python -m bench.bench_rbd_clone [--rounds 7] [--full-copy-sizes 1,10]

Starts (and stops) its own lab Ceph and a Glance with an rbd store. For SPARSE
parents of 1, 10 and 100 GiB it creates a Glance record, an RBD image named after it
in pool ``images`` holding a few MiB at a few offsets, a protected snapshot ``snap``,
and adds ``rbd://FSID/images/ID/snap`` to the record, so the end-to-end path is the
real one: ``api.fetch(conf, ID, 'rbd:vms/NAME')`` in this process (warm RADOS
connection), Glance's record and locations API included (asked concurrently).
Medians of interleaved rounds:

- end-to-end clone vs a bare ``rbd.RBD().clone`` of the same snapshot;
- full copies of the same image: stream_copy from RBD to a local file (sha512
  verified), ``rbd export | rbd import`` and ``rbd export`` to a file (Nova's download
  for file-backed disks: never hash-checked). Each starts from primed memory (up to
  2.5 GiB; bench.common.prime_memory says why), so a 10 GiB copy still pays this VM's
  first-touch cost for the rest, the same for every method that writes a file.

Goals: clone <= 2x the bare clone; flat as the image grows (t(100 GiB) / t(1 GiB)
close to 1). Two ratios are printed: rbd_clone's own decide + act, and the whole
fetch, which also waits for Glance's API (a round trip the bare clone never makes).
Where the end-to-end time goes is measured by timing the real calls (Glance,
decide, clone), never estimated.
Every image, clone and file it creates is removed; written data stays a few MiB per
image (memstore keeps it in the OSD's RAM).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import rados  # noqa: E402  (Debian's bindings, linked into the venv)
import rbd  # noqa: E402

from image_handlers import api  # noqa: E402
from image_handlers.chain import HandlerChain  # noqa: E402
from image_handlers.glance import GlanceReader  # noqa: E402
from image_handlers.handlers.rbd_clone import RbdCloneHandler  # noqa: E402
from bench.common import hashlib_speed, prime_memory  # noqa: E402
from tools.lab import CephService, GlanceService  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20
SIZES_GIB = (1, 10, 100)
WRITE = 1 * MiB                 # bytes written at each of the offsets below
FULL_COPY_BUDGET = 180.0        # seconds one full-copy run may take before we stop
HANDLER_PATH = 'rbd_clone decide + act'
GLANCE_PHASE = 'Glance: record + locations API'


def data_writes(size: int) -> list[tuple[int, bytes]]:
    """A few MiB at the start, the thirds and the end: a sparse 'OS image'."""
    offsets = [0, size // 3 // MiB * MiB, 2 * size // 3 // MiB * MiB, size - WRITE]
    return [(off, (hashlib.sha512(str(off).encode()).digest() * (WRITE // 64)))
            for off in offsets]


def sparse_sha512(size: int, writes: list[tuple[int, bytes]]) -> str:
    """sha512 of the whole image (zeros except the writes), streamed in chunks."""
    chunk = 64 * MiB
    zeros = bytes(chunk)
    h = hashlib.sha512()
    for start in range(0, size, chunk):
        end = min(size, start + chunk)
        hits = [(o, d) for o, d in writes if o < end and o + len(d) > start]
        if not hits:
            h.update(memoryview(zeros)[:end - start])
            continue
        buf = bytearray(end - start)
        for off, data in hits:
            lo, hi = max(off, start), min(off + len(data), end)
            buf[lo - start:hi - start] = data[lo - off:hi - off]
        h.update(buf)
    return h.hexdigest()


class PhaseTimer:
    """Times the real calls of the end-to-end path by wrapping them in place."""

    PHASES = (('chain setup', HandlerChain, '__init__'),
              (GLANCE_PHASE, GlanceReader, 'get_image'),
              ('decide (rbd_clone)', RbdCloneHandler, 'decide'),
              ('clone (rbd_clone act)', RbdCloneHandler, 'act'))

    def __init__(self) -> None:
        self.current: collections.Counter = collections.Counter()
        self.samples: dict[str, list[float]] = collections.defaultdict(list)
        for label, owner, attr in self.PHASES:
            setattr(owner, attr, self._wrap(label, getattr(owner, attr)))

    def _wrap(self, label: str, func):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.current[label] += time.perf_counter() - t0
        return timed

    def start(self) -> None:
        self.current.clear()

    def stop(self, total: float, size_gib: int) -> None:
        for label, _owner, _attr in self.PHASES:
            self.samples[f'{size_gib}:{label}'].append(self.current[label])
        other = total - sum(self.current.values())
        self.samples[f'{size_gib}:other (chain walk, results, logging)'].append(other)
        self.samples[f'{size_gib}:{HANDLER_PATH}'].append(
            self.current['decide (rbd_clone)'] + self.current['clone (rbd_clone act)'])


class Bench:
    def __init__(self, ceph: CephService, glance: GlanceService, work: str) -> None:
        self.ceph, self.glance, self.work = ceph, glance, work
        self.client = glance.client()
        self.rados = rados.Rados(conffile=str(ceph.conf_path), rados_id='admin')
        self.rados.connect(timeout=10)
        self.images: dict[int, str] = {}        # size in GiB -> Glance image id
        self.conf_path = os.path.join(work, 'nova.conf')
        with open(self.conf_path, 'w') as f:
            f.write(glance.nova_conf() + '\n[libvirt]\nimages_rbd_pool = vms\n'
                    f'images_rbd_ceph_conf = {ceph.conf_path}\nrbd_user = admin\n'
                    f'\n[image_handlers]\nstate_dir = {work}/state\n'
                    'progress_interval = 3600\n'
                    # Else the next copy tries the not-yet-measured Glance API first.
                    'prefer_measured_throughput = false\n')
        self.conf = api.make_conf([self.conf_path])
        self.env = {**os.environ, **ceph.env()}

    # -- images --------------------------------------------------------------------

    def make_parent(self, size_gib: int, with_hash: bool) -> str:
        size = size_gib * GiB
        img = self.client.images.create(name=f'bench-rbd-{size_gib}g',
                                        disk_format='raw', container_format='bare')
        image_id = img['id']
        self.images[size_gib] = image_id
        writes = data_writes(size)
        with self.rados.open_ioctx('images') as ioctx:
            rbd.RBD().create(ioctx, image_id, size, old_format=False)
            with contextlib.closing(rbd.Image(ioctx, image_id)) as parent:
                for off, data in writes:
                    parent.write(data, off)
                parent.create_snap('snap')
                parent.protect_snap('snap')
        validation = ({'os_hash_algo': 'sha512',
                       'os_hash_value': sparse_sha512(size, writes)}
                      if with_hash else None)
        self.client.images.add_location(
            image_id, f'rbd://{self.ceph.fsid}/images/{image_id}/snap',
            {'store': 'ceph'}, validation_data=validation)
        record = self.client.images.get(image_id)
        assert record['status'] == 'active' and record['size'] == size, record
        return image_id

    def remove_parents(self) -> list[str]:
        """Delete the Glance records (Glance removes the RBD images); remove what it
        left behind ourselves. Returns what could not be removed."""
        left = []
        for image_id in self.images.values():
            with contextlib.suppress(Exception):
                self.client.images.delete(image_id)
            with self.rados.open_ioctx('images') as ioctx:
                if image_id in rbd.RBD().list(ioctx):
                    try:
                        with contextlib.closing(rbd.Image(ioctx, image_id)) as img:
                            if img.is_protected_snap('snap'):
                                img.unprotect_snap('snap')
                            img.remove_snap('snap')
                        rbd.RBD().remove(ioctx, image_id)
                    except rbd.Error as exc:
                        left.append(f'images/{image_id}: {exc}')
        return left

    def remove_vms(self, name: str) -> None:
        with self.rados.open_ioctx('vms') as ioctx:
            rbd.RBD().remove(ioctx, name)

    # -- the runs -------------------------------------------------------------------

    def e2e_clone(self, size_gib: int, phases: PhaseTimer | None) -> float:
        name = f'bench-{uuid.uuid4().hex[:8]}'
        if phases:
            phases.start()
        t0 = time.perf_counter()
        result = api.fetch(self.conf, self.images[size_gib], f'rbd:vms/{name}')
        seconds = time.perf_counter() - t0
        if phases:
            phases.stop(seconds, size_gib)
        assert result.handler == 'rbd_clone' and result.zero_copy, result.to_dict()
        self.remove_vms(name)
        return seconds

    def bare_clone(self, size_gib: int) -> float:
        name = f'bench-{uuid.uuid4().hex[:8]}'
        with self.rados.open_ioctx('images') as p_ioctx, \
                self.rados.open_ioctx('vms') as c_ioctx:
            t0 = time.perf_counter()
            rbd.RBD().clone(p_ioctx, self.images[size_gib], 'snap', c_ioctx, name)
            seconds = time.perf_counter() - t0
        self.remove_vms(name)
        return seconds

    def anatomy(self, size_gib: int) -> dict[str, float]:
        """The librbd calls rbd_clone makes, replayed one by one and timed: what
        decide and act cost beyond the bare clone."""
        image_id, name = self.images[size_gib], f'bench-{uuid.uuid4().hex[:8]}'
        spent: dict[str, float] = {}

        @contextlib.contextmanager
        def step(label: str):
            t0 = time.perf_counter()
            yield
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

        with step('act: open 2 ioctx (decide opens 2 more)'):
            p_ioctx = self.rados.open_ioctx('images')
            c_ioctx = self.rados.open_ioctx('vms')
        try:
            with step('decide: open parent read-only'):
                parent = rbd.Image(p_ioctx, image_id, read_only=True)
            with contextlib.closing(parent):
                with step('decide: list snaps, is protected'):
                    parent.list_snaps()
                    parent.is_protected_snap('snap')
                with step('decide: set_snap, size, parent spec'):
                    parent.set_snap('snap')
                    parent.size()
                    with contextlib.suppress(rbd.ImageNotFound):
                        parent.get_parent_image_spec()
            with step('decide: target exists? (open -> ENOENT)'):
                with contextlib.suppress(rbd.ImageNotFound):
                    rbd.Image(c_ioctx, name, read_only=True).close()
            with step('act: rbd.RBD().clone'):
                rbd.RBD().clone(p_ioctx, image_id, 'snap', c_ioctx, name)
            with step('act: open + close the clone (only to resize/flatten)'):
                rbd.Image(c_ioctx, name).close()
            rbd.RBD().remove(c_ioctx, name)
        finally:
            p_ioctx.close()
            c_ioctx.close()
        return spent

    def stream_copy(self, size_gib: int) -> float:
        path = os.path.join(self.work, f'copy-{uuid.uuid4().hex[:8]}.raw')
        t0 = time.perf_counter()
        result = api.fetch(self.conf, self.images[size_gib], path)
        seconds = time.perf_counter() - t0
        assert (result.handler == 'stream_copy' and result.location.startswith('rbd://')
                and result.verified), result.to_dict()
        os.unlink(path)
        return seconds

    def export_import(self, size_gib: int) -> float:
        name = f'bench-{uuid.uuid4().hex[:8]}'
        src = f'images/{self.images[size_gib]}@snap'
        seconds = self._shell(f'rbd export --no-progress {src} - | '
                              f'rbd import --no-progress - vms/{name}')
        self.remove_vms(name)
        return seconds

    def export_file(self, size_gib: int) -> float:
        path = os.path.join(self.work, f'export-{uuid.uuid4().hex[:8]}.raw')
        seconds = self._shell(f'rbd export --no-progress '
                              f'images/{self.images[size_gib]}@snap {path}')
        os.unlink(path)
        return seconds

    def _shell(self, script: str) -> float:
        t0 = time.perf_counter()
        proc = subprocess.run(['bash', '-o', 'pipefail', '-c', script], env=self.env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f'{script} failed ({proc.returncode}): {proc.stderr[-2000:]}')
        return seconds

    def close(self) -> None:
        self.rados.shutdown()


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=7,
                        help='interleaved rounds of the clones (median)')
    parser.add_argument('--copy-rounds', type=int, default=3,
                        help='rounds of each full copy (median)')
    parser.add_argument('--full-copy-sizes', default='1,10',
                        help='parent sizes (GiB) that are also fully copied')
    args = parser.parse_args()
    copy_sizes = [int(s) for s in args.full_copy_sizes.split(',') if s.strip()]
    logging.basicConfig(level=logging.ERROR)   # the FULL COPY warnings are expected
    os.makedirs(os.path.join(REPO, '.lab'), exist_ok=True)
    work = tempfile.mkdtemp(prefix='bench-rbd-', dir=os.path.join(REPO, '.lab'))
    ceph = CephService()
    glance = GlanceService(ceph=ceph)
    bench = None
    leftovers: list[str] = []
    try:
        ceph.start()
        glance.start()
        bench = Bench(ceph, glance, work)
        t0 = time.monotonic()
        for size_gib in SIZES_GIB:
            bench.make_parent(size_gib, with_hash=size_gib in copy_sizes)
        setup = time.monotonic() - t0
        for size_gib in SIZES_GIB:              # warm: connection, caches, imports
            bench.e2e_clone(size_gib, None)
            bench.bare_clone(size_gib)
        phases = PhaseTimer()
        e2e: dict[int, list[float]] = collections.defaultdict(list)
        bare: dict[int, list[float]] = collections.defaultdict(list)
        for _ in range(args.rounds):
            for size_gib in SIZES_GIB:
                e2e[size_gib].append(bench.e2e_clone(size_gib, phases))
                bare[size_gib].append(bench.bare_clone(size_gib))
        steps: dict[str, list[float]] = collections.defaultdict(list)
        for _ in range(args.rounds):
            for size_gib in (SIZES_GIB[0], SIZES_GIB[-1]):
                for label, seconds in bench.anatomy(size_gib).items():
                    steps[label].append(seconds)
        copies: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
        skipped: list[str] = []
        hash_speeds: list[float] = []          # sampled between the copies
        methods = (('stream_copy', bench.stream_copy),
                   ('export|import', bench.export_import),
                   ('export file', bench.export_file))
        for size_gib in copy_sizes:
            over_budget: set[str] = set()
            for _ in range(args.copy_rounds):
                hash_speeds.append(hashlib_speed())
                for label, run in methods:
                    if label in over_budget:
                        continue
                    prime_memory(min(size_gib, 2) * GiB + 512 * MiB)
                    seconds = run(size_gib)
                    copies[(label, size_gib)].append(seconds)
                    if seconds > FULL_COPY_BUDGET:
                        over_budget.add(label)
                        skipped.append(f'{label} at {size_gib} GiB: one run took '
                                       f'{seconds:.0f} s, not repeated')
        report(args, setup, e2e, bare, copies, copy_sizes, skipped, phases, steps,
               hash_speeds)
    finally:
        if bench is not None:
            leftovers = bench.remove_parents()
            bench.close()
        glance.stop()
        ceph.stop()
        shutil.rmtree(work, ignore_errors=True)
    if leftovers:
        print('NOT removed:', '; '.join(leftovers))
        return 1
    print('\nevery image, clone and file created was removed; lab stopped')
    return 0


def report(args, setup, e2e, bare, copies, copy_sizes, skipped, phases, steps,
               hash_speeds) -> None:
    print(f'\nrbd_clone benchmark: sparse parents ({4 * WRITE // MiB} MiB written each), '
          f'{os.cpu_count()} CPUs, medians of {args.rounds} interleaved clone rounds '
          f'and {args.copy_rounds} full-copy rounds (setup {setup:.1f} s)\n')
    head = (f'{"parent":>8}{"e2e clone":>12}{"bare clone":>12}{"e2e/bare":>10}'
            f'{"stream_copy":>14}{"export|import":>15}{"export file":>13}')
    print(head)
    print(f'{"":>8}{"ms":>12}{"ms":>12}{"":>10}{"s (sha512)":>14}{"s":>15}{"s":>13}')
    for size_gib in SIZES_GIB:
        e, b = median_ms(e2e[size_gib]), median_ms(bare[size_gib])
        cells = []
        for label in ('stream_copy', 'export|import', 'export file'):
            vals = copies.get((label, size_gib))
            cells.append(f'{statistics.median(vals):.2f}' if vals else '--')
        print(f'{size_gib:>6} G{e:>12.1f}{b:>12.1f}{e / b:>10.2f}'
              f'{cells[0]:>14}{cells[1]:>15}{cells[2]:>13}')
    print('\nratios (goal in brackets):')
    for size_gib in SIZES_GIB:
        b = median_ms(bare[size_gib])
        handler = median_ms(phases.samples[f'{size_gib}:{HANDLER_PATH}']) / b
        ratio = median_ms(e2e[size_gib]) / b
        glance = median_ms(phases.samples[f'{size_gib}:{GLANCE_PHASE}'])
        print(f'  {size_gib:>3} GiB: {HANDLER_PATH} / bare librbd clone = {handler:.2f} '
              f'[<= 2] {"ok" if handler <= 2 else "MISSED"}')
        print(f'           whole fetch (Glance record + locations, concurrent) / bare = '
              f'{ratio:.2f} [<= 2] {"ok" if ratio <= 2 else "MISSED"}; Glance alone: '
              f'{glance:.1f} ms')
    flat_e2e = median_ms(e2e[SIZES_GIB[-1]]) / median_ms(e2e[SIZES_GIB[0]])
    flat_bare = median_ms(bare[SIZES_GIB[-1]]) / median_ms(bare[SIZES_GIB[0]])
    print(f'  flatness: e2e t(100 GiB) / t(1 GiB) = {flat_e2e:.2f} [~1]; '
          f'bare t(100 GiB) / t(1 GiB) = {flat_bare:.2f}')
    hash_mib = statistics.median(hash_speeds) / MiB if hash_speeds else 0.0
    for size_gib in copy_sizes:
        vals = copies.get(('stream_copy', size_gib))
        if vals:
            t = statistics.median(vals)
            rate = size_gib * GiB / t / MiB
            print(f'  {size_gib:>3} GiB: stream_copy from RBD takes '
                  f'{t * 1000 / median_ms(e2e[size_gib]):.0f}x the e2e clone; '
                  f'{rate:.0f} MiB/s = {rate / hash_mib:.2f} x hashlib sha512 on one '
                  f'core ({hash_mib:.0f} MiB/s, the bound of a verified copy; holes '
                  f'are not read but are hashed)')
    print(f'  full copies run at: {", ".join(f"{s} GiB" for s in copy_sizes) or "none"}'
          + (f'; {"; ".join(skipped)}' if skipped else ''))
    print('\nwhere the end-to-end clone time goes (median ms per fetch, measured by '
          'timing the real calls):')
    labels = [label for label, _o, _a in PhaseTimer.PHASES] + [
        'other (chain walk, results, logging)']
    print(f'  {"phase":<38}' + ''.join(f'{f"{s} GiB":>10}' for s in SIZES_GIB))
    for label in labels:
        print(f'  {label:<38}' + ''.join(
            f'{median_ms(phases.samples[f"{s}:{label}"]):>10.1f}' for s in SIZES_GIB))
    print(f'  {"bare librbd clone, for reference":<38}' + ''.join(
        f'{median_ms(bare[s]):>10.1f}' for s in SIZES_GIB))
    print(f'\nthe librbd calls of rbd_clone replayed one by one (median ms, '
          f'{SIZES_GIB[0]} and {SIZES_GIB[-1]} GiB parents):')
    for label, values in steps.items():
        print(f'  {label:<52}{median_ms(values):>8.1f}')


if __name__ == '__main__':
    sys.exit(main())
