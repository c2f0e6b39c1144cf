"""Benchmark: what verifying image signatures costs, against unsigned images, in one run.

    .venv/bin/python -m bench.bench_signatures [--size-mib 1024] [--rounds 5]
                     [--run-dir DIR] [--hash-method SHA-256]

The lab, its own (IH_LAB_RUN_DIR is set to --run-dir, default a fresh directory
under .lab/, before tools.lab is imported; everything in it is stopped and removed at
the end, also on failure): Ceph, the real Keystone, Barbican behind it, and a Glance
behind Keystone with its fs store and the rbd store "ceph". A CA and a signing
certificate it issued are stored in Barbican by the nova service user; one image's
bytes (random 1 MiB blocks, every eighth all zeros: the snapshot read is a real
read) are uploaded four times as the nova user: unsigned and signed
(``img_signature*`` over the same bytes, tools/lab/signing.py) to the fs store and to
the rbd store. Every fetch goes through the real chain in this process
(``HandlerChain.request`` + ``fetch``, nova.conf of tools/lab/keystone.py: catalog
lookups, password auth, castellan reading the certificate from Barbican). One chain
per nova.conf is kept for the whole run, as Nova's hooks keep one per process.

Medians of interleaved rounds (round 0 is a discarded warm-up; the order of the
runs within a round alternates), each compared with its baseline of the same run:

1. verified copy: ``stream_copy`` of the fs-store images from Glance's image data
   API to a local file, the unsigned one with ``[glance] verify_glance_signatures``
   off (sha512 verified), the signed one with it on (sha512 and the signature, each
   in a pipeline stage of its own, in the same pass). Each copy starts from primed
   memory (bench.common.prime_memory says why). Goal: signed throughput >= 0.9x
   unsigned.
2. clones: ``rbd_clone`` of the unsigned rbd-store image, verification off (the
   baseline), against the signed one with verification on: the FIRST clone of a
   snapshot never verified on this host (a fresh state_dir per round, so it reads
   the snapshot once; that read timed on its own) and REPEATED clones (its verdict
   in state_dir/rbd-verdicts reused). Each clone is a new target name, removed right
   after. Goal: repeated <= 1.2x unsigned.
3. where the time of a clone goes, measured by timing the real calls in place:
   chain.request (Glance record + locations, the certificate from Barbican, the
   rest: policy, binding the key) against rbd_clone's decide and act.

No assertion on any timing: bench/common.py's rule, a shared noisy machine.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.common import hashlib_speed, prime_memory  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20
BLOCK = 1 * MiB
ZERO_EVERY = 8              # every eighth 1 MiB block is all zeros
CLONE_PREFIX = 'bench-sig-'
# The phases of a fetch that are timed in place (label, module attribute path).
REQUEST = 'chain.request'
GLANCE = 'Glance record + locations'
CERT = 'certificate from Barbican'
DECIDE = 'rbd_clone decide'
ACT = 'rbd_clone act'
READ = 'snapshot read (in act)'
BARBICAN_REQUESTS = 'Barbican requests'
BARBICAN_HTTP = 'Barbican HTTP round trips'


def size_label(size: int) -> str:
    return f'{size // GiB} GiB' if size % GiB == 0 else f'{size // MiB} MiB'


def verdict(ok: bool) -> str:
    return 'MET' if ok else 'MISSED'


def make_data(path: Path, size: int) -> None:
    """Random 1 MiB blocks (each stamped with its index: no two alike), every
    ZERO_EVERY-th block all zeros."""
    pool = os.urandom(64 * MiB)
    zeros = bytes(BLOCK)
    with open(path, 'wb') as f:
        for i in range(0, size // BLOCK):
            if i % ZERO_EVERY == ZERO_EVERY - 1:
                f.write(zeros)
                continue
            off = (i * BLOCK) % len(pool)
            f.write(i.to_bytes(8, 'little') + pool[off + 8:off + BLOCK])
        tail = size % BLOCK
        if tail:
            f.write(pool[:tail])


def machine_busy() -> float:
    """CPU seconds all cores of the machine spent busy since boot (/proc/stat:
    user, nice, system, irq, softirq, steal): anyone's work, ours included."""
    with open('/proc/stat') as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields[i] for i in (0, 1, 2, 5, 6, 7)) / os.sysconf('SC_CLK_TCK')


class PhaseTimer:
    """Wraps the real calls in place and sums their time per fetch, per kind."""

    def __init__(self) -> None:
        from image_handlers import chain as chain_mod
        from image_handlers.glance import GlanceReader
        from image_handlers.handlers.rbd_clone import RbdCloneHandler
        from image_handlers.trust.certificates import CertificateSource
        self.current: collections.Counter = collections.Counter()
        self.samples: dict[str, dict[str, list[float]]] = collections.defaultdict(
            lambda: collections.defaultdict(list))
        self.active = False
        for label, owner, attr in ((REQUEST, chain_mod.HandlerChain, 'request'),
                                   (GLANCE, GlanceReader, 'get_image'),
                                   (CERT, CertificateSource, 'get'),
                                   (DECIDE, RbdCloneHandler, 'decide'),
                                   (ACT, RbdCloneHandler, 'act'),
                                   (READ, RbdCloneHandler, '_verify_snapshot')):
            setattr(owner, attr, self._wrap(label, getattr(owner, attr)))
        from keystoneauth1 import session as ks_session
        request = ks_session.Session.request

        def counted(session, url, method, *args, **kwargs):
            if not (self.active and 'secrets/' in str(url)):
                return request(session, url, method, *args, **kwargs)
            self.current[BARBICAN_REQUESTS] += 1
            t0 = time.perf_counter()
            try:
                return request(session, url, method, *args, **kwargs)
            finally:
                self.current[BARBICAN_HTTP] += time.perf_counter() - t0
        ks_session.Session.request = counted

    def _wrap(self, label: str, func):
        @functools.wraps(func)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                if self.active:
                    self.current[label] += time.perf_counter() - t0
        return timed

    def start(self) -> None:
        self.current.clear()
        self.active = True

    def stop(self, kind: str, total: float) -> None:
        self.active = False
        for label, seconds in self.current.items():
            self.samples[kind][label].append(seconds)
        self.samples[kind]['total'].append(total)

    def median_ms(self, kind: str, label: str) -> float:
        values = self.samples[kind].get(label)
        return statistics.median(values) * 1000 if values else 0.0


class Bench:
    def __init__(self, args, work: Path, ceph, keystone, glance, pki) -> None:
        import rados
        from image_handlers import api
        from image_handlers.chain import HandlerChain
        from tools.lab.keystone import nova_conf_keystone
        self.args, self.work, self.ceph, self.glance = args, work, ceph, glance
        self.size = args.size_mib * MiB
        self.api, self.HandlerChain = api, HandlerChain
        self.base_conf = nova_conf_keystone(keystone)
        self.client = glance.keystone_client('nova', 'service')
        self.pki = pki
        self.images: dict[str, str] = {}
        self.copies_dir = work / 'copies'
        self.copies_dir.mkdir()
        self.rados = rados.Rados(conffile=str(ceph.conf_path), rados_id='admin')
        self.rados.connect(timeout=10)
        self.clones: set[str] = set()
        self.chains = {
            'copy unsigned': self._chain('copy-unsigned', 'stream_copy', False),
            'copy signed': self._chain('copy-signed', 'stream_copy', True),
            'clone unsigned': self._chain('clone-unsigned', 'rbd_clone', False),
            'clone repeated': self._chain('clone-repeated', 'rbd_clone', True),
        }
        self.first_rounds = 0
        self.cpu: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        self.ticks = os.sysconf('SC_CLK_TCK')

    def cpu_seconds(self) -> tuple[float, float]:
        """(CPU seconds of this process, all threads; of Glance's uWSGI processes)."""
        from tools.lab.service import group_members
        ours = resource.getrusage(resource.RUSAGE_SELF)
        glance = 0.0
        pid = self.glance.pid()
        for member in group_members(pid) if pid else ():
            with contextlib.suppress(OSError):
                with open(f'/proc/{member}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
                glance += (int(fields[11]) + int(fields[12])) / self.ticks
        return ours.ru_utime + ours.ru_stime, glance

    # -- configuration -------------------------------------------------------------

    def _conf(self, name: str, handlers: str, verify: bool):
        text = self.base_conf.replace(
            '[glance]\n', f'[glance]\nverify_glance_signatures = '
                          f'{"true" if verify else "false"}\n', 1)
        path = self.work / f'nova-{name}.conf'
        path.write_text(
            text + '\n[libvirt]\nimages_rbd_pool = vms\n'
            f'images_rbd_ceph_conf = {self.ceph.conf_path}\nrbd_user = admin\n'
            f'\n[image_handlers]\nstate_dir = {self.work / ("state-" + name)}\n'
            f'handlers = {handlers}\nprogress_interval = 3600\n'
            'prefer_measured_throughput = false\n')
        return self.api.make_conf([str(path)])

    def _chain(self, name: str, handlers: str, verify: bool, glance=None):
        return self.HandlerChain(self._conf(name, handlers, verify), glance=glance)

    # -- images --------------------------------------------------------------------

    def make_images(self) -> None:
        from tools.lab import signing
        data = self.work / 'image.raw'
        make_data(data, self.size)
        props = signing.sign(data, self.pki.key, self.args.hash_method,
                             certificate_uuid=self.pki.cert)
        for backend in ('fs', 'ceph'):
            for signed in (False, True):
                img = self.client.images.create(
                    name=f'bench-sig-{backend}-{"signed" if signed else "unsigned"}',
                    disk_format='raw', container_format='bare')
                self.images[f'{backend} {"signed" if signed else "unsigned"}'] = img['id']
                with open(data, 'rb') as f:
                    self.client.images.upload(img['id'], f, image_size=self.size,
                                              backend=backend)
                if signed:
                    self.client.images.update(img['id'], **props)
                record = self.client.images.get(img['id'])
                assert record['status'] == 'active' and record['size'] == self.size, \
                    record
        data.unlink()

    # -- the runs ------------------------------------------------------------------

    def _fetch(self, chain, image_id: str, target: str, phases: PhaseTimer | None,
               kind: str):
        from image_handlers.targets import parse_target
        if phases:
            phases.start()
        t0 = time.perf_counter()
        result = chain.fetch(chain.request(image_id, parse_target(target)))
        seconds = time.perf_counter() - t0
        if phases:
            phases.stop(kind, seconds)
        return seconds, result

    def copy(self, signed: bool) -> float:
        kind = 'copy signed' if signed else 'copy unsigned'
        path = self.copies_dir / f'copy-{uuid.uuid4().hex[:8]}.raw'
        prime_memory(self.size + 512 * MiB)
        cpu0 = self.cpu_seconds() + (machine_busy(),)
        try:
            seconds, result = self._fetch(self.chains[kind],
                                          self.images[f'fs {"signed" if signed else "unsigned"}'],
                                          str(path), None, kind)
            assert result.handler == 'stream_copy' and result.verified, result.to_dict()
            assert ('signature' in result.verified) == signed, result.verified
            assert os.path.getsize(path) == self.size
            now = self.cpu_seconds() + (machine_busy(),)
            self.cpu[kind].append(tuple(b - a for a, b in zip(cpu0, now)))
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return seconds

    def clone(self, kind: str, phases: PhaseTimer, warm_up: bool = False) -> float:
        """kind: 'clone unsigned', 'clone repeated' or 'clone first'; the warm-up's
        repeated clone is the repeated chain's first (it reads the snapshot)."""
        name = f'{CLONE_PREFIX}{uuid.uuid4().hex[:8]}'
        if kind == 'clone first':
            # A snapshot never verified on this host: a fresh state_dir (its own
            # chain; the warm Glance reader of the repeated chain, as one process).
            self.first_rounds += 1
            chain = self._chain(f'clone-first-{self.first_rounds}', 'rbd_clone', True,
                                glance=self.chains['clone repeated'].glance)
        else:
            chain = self.chains[kind]
        image_id = self.images['ceph unsigned' if kind == 'clone unsigned'
                               else 'ceph signed']
        self.clones.add(name)
        try:
            seconds, result = self._fetch(chain, image_id, f'rbd:vms/{name}', phases,
                                          kind)
        finally:
            self.remove_clone(name)
        assert result.handler == 'rbd_clone' and result.bytes_copied == 0, \
            result.to_dict()
        if kind == 'clone first' or (kind == 'clone repeated' and warm_up):
            assert 'read now' in (result.verified or ''), result.verified
        elif kind == 'clone repeated':
            assert 'verified before' in (result.verified or ''), result.verified
        return seconds

    def remove_clone(self, name: str) -> None:
        import rbd
        with self.rados.open_ioctx('vms') as ioctx:
            with contextlib.suppress(rbd.ImageNotFound):
                rbd.RBD().remove(ioctx, name)
        self.clones.discard(name)

    # -- cleanup -------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Remove every clone, image and copy made; returns what could not be."""
        import rbd
        left = []
        for name in list(self.clones):
            try:
                self.remove_clone(name)
            except Exception as exc:  # noqa: BLE001 - go on removing
                left.append(f'vms/{name}: {exc}')
        with self.rados.open_ioctx('vms') as ioctx:
            left += [f'vms/{n} left' for n in rbd.RBD().list(ioctx)
                     if n.startswith(CLONE_PREFIX)]
        for image_id in self.images.values():
            try:
                self.client.images.delete(image_id)
            except Exception as exc:  # noqa: BLE001
                left.append(f'Glance image {image_id}: {exc}')
        with self.rados.open_ioctx('images') as ioctx:
            left += [f'images/{n} left' for n in rbd.RBD().list(ioctx)
                     if n in self.images.values()]
        self.rados.shutdown()
        left += [f'{p} left' for p in self.copies_dir.iterdir()]
        return left


def run(bench: Bench, args) -> dict:
    phases = PhaseTimer()
    hash_size = max(64 * MiB, min(512 * MiB, bench.size))
    res: dict[str, list[float]] = collections.defaultdict(list)
    # Verified copies, interleaved; round 0 is a warm-up (connections, imports).
    for round_no in range(args.rounds + 1):
        res['sha512'].append(hashlib_speed(hash_size))
        order = (False, True) if round_no % 2 else (True, False)
        for signed in order:
            seconds = bench.copy(signed)
            if round_no:
                res['copy signed' if signed else 'copy unsigned'].append(seconds)
    for kind in ('copy unsigned', 'copy signed'):
        del bench.cpu[kind][0]                      # the warm-up's
    # Clones, interleaved; round 0's repeated clone is the repeated chain's first
    # (it reads the snapshot and leaves the verdict the later ones reuse).
    kinds = ['clone unsigned', 'clone repeated', 'clone first']
    for round_no in range(args.rounds + 1):
        order = kinds if round_no % 2 == 0 else kinds[::-1]
        for kind in order:
            seconds = bench.clone(kind, phases, warm_up=not round_no)
            if round_no:
                res[kind].append(seconds)
            else:   # drop the warm-up's phase samples too
                for values in phases.samples[kind].values():
                    values.pop()
    # The certificate read alone, as the chain reads it: stored with a name and
    # the same one without (barbicanclient then reads the metadata again for every
    # lazy property castellan asks for).
    from image_handlers.trust.certificates import CertificateSource
    chain = bench.chains['clone repeated']
    for round_no in range(args.rounds + 1):
        for which in (('named', 'unnamed') if round_no % 2 else ('unnamed', 'named')):
            uuid_ = bench.pki.cert if which == 'named' else bench.pki.unnamed
            phases.start()
            t0 = time.perf_counter()
            CertificateSource(chain.conf, chain.glance.key_manager_context, 30).get(uuid_)
            phases.stop(f'certificate {which}', time.perf_counter() - t0)
            if not round_no:
                for values in phases.samples[f'certificate {which}'].values():
                    values.pop()
    res['sha512'] = res['sha512'][1:] or res['sha512']
    return {'times': res, 'phases': phases}


def report(args, bench: Bench, env: dict, out: dict, setup: float) -> None:
    times, phases = out['times'], out['phases']
    size, label = bench.size, size_label(bench.size)
    med = statistics.median
    sha512 = med(times['sha512']) / MiB
    print(f'\nsignature benchmark: {label} image ({ZERO_EVERY - 1} in {ZERO_EVERY} '
          f'1 MiB blocks random), signed {args.hash_method} with RSA-PSS 2048, '
          f'medians of {args.rounds} interleaved rounds after a warm-up (setup '
          f'{setup:.0f} s)')
    print(f'  hashlib sha512 (1 core) sampled each copy round: {sha512:.0f} MiB/s '
          f'(at the start {env["sha512"] / MiB:.0f}, sha256 {env["sha256"] / MiB:.0f})')
    unsigned_rate = size / med(times['copy unsigned']) / MiB
    signed_rate = size / med(times['copy signed']) / MiB
    ratio = signed_rate / unsigned_rate
    print('\ngoals:')
    print(f'  verified copy {label}: signed / unsigned throughput = {ratio:.2f} '
          f'[>= 0.9] {verdict(ratio >= 0.9)} ({signed_rate:.0f} / {unsigned_rate:.0f} '
          f'MiB/s, stream_copy from Glance\'s data API to a file; sha512 on one core '
          f'{sha512:.0f} MiB/s)')
    gib = size / GiB
    parts = []
    for kind in ('copy unsigned', 'copy signed'):
        ours = med(c[0] for c in bench.cpu[kind])
        glance = med(c[1] for c in bench.cpu[kind])
        machine = med(c[2] / t for c, t in zip(bench.cpu[kind], times[kind]))
        busy = (ours + glance) / med(times[kind])
        parts.append(f'{kind[5:]} {ours / gib:.2f} + {glance / gib:.2f} '
                     f'({busy:.2f} cores; the machine: {machine:.2f} of '
                     f'{os.cpu_count()} busy)')
    print(f'    CPU s per GiB, this process + Glance: {"; ".join(parts)}; hashlib '
          f'alone on one core: sha512 {GiB / env["sha512"]:.2f} s/GiB, the '
          f'signature\'s {args.hash_method} {GiB / env["signature"]:.2f} s/GiB')
    unsigned = med(times['clone unsigned'])
    repeated = med(times['clone repeated'])
    first = med(times['clone first'])
    r_rep, r_first = repeated / unsigned, first / unsigned
    read = phases.median_ms('clone first', READ) / 1000
    read_rate = size / read / MiB if read else float('nan')
    print(f'  signed clone {label}: repeated / unsigned = {r_rep:.2f} [<= 1.2] '
          f'{verdict(r_rep <= 1.2)} (median ms per fetch, chain.request + fetch: '
          f'{repeated * 1000:.1f} / {unsigned * 1000:.1f})')
    print(f'  signed clone {label}: first / unsigned = {r_first:.2f} (reads the '
          f'snapshot once: {read_rate:.0f} MiB/s; {first * 1000:.0f} / '
          f'{unsigned * 1000:.1f} ms)')
    print('\nwhere the time goes (median ms per fetch, the real calls timed in place):')
    cols = ('clone unsigned', 'clone repeated', 'clone first')
    print(f'  {"phase":<44}' + ''.join(f'{c[6:]:>12}' for c in cols))
    rows = [(REQUEST, REQUEST), ('  ' + GLANCE, GLANCE), ('  ' + CERT, CERT),
            (DECIDE, DECIDE), (ACT, ACT), ('  ' + READ, READ), ('total', 'total')]
    for shown, key in rows:
        print(f'  {shown:<44}' + ''.join(f'{phases.median_ms(c, key):>12.1f}'
                                         for c in cols))
    print(f'  {"HTTP requests to Barbican (count)":<44}' + ''.join(
        f'{phases.median_ms(c, BARBICAN_REQUESTS) / 1000:>12.0f}' for c in cols))
    p = functools.partial(phases.median_ms, 'clone repeated')
    u = functools.partial(phases.median_ms, 'clone unsigned')
    rest = p(REQUEST) - p(GLANCE) - p(CERT)
    print(f'  repeated signed clone: chain.request {p(REQUEST):.1f} ms (Glance '
          f'{p(GLANCE):.1f}, certificate from Barbican {p(CERT):.1f}, rest '
          f'{rest:.1f}) vs rbd_clone decide+act {p(DECIDE) + p(ACT):.1f} ms; unsigned: '
          f'chain.request {u(REQUEST):.1f}, decide+act {u(DECIDE) + u(ACT):.1f}; the '
          f'extra {(repeated - unsigned) * 1000:.1f} ms of a repeated signed clone: '
          f'certificate {p(CERT):.1f}, decide {p(DECIDE) - u(DECIDE):+.1f}, act '
          f'{p(ACT) - u(ACT):+.1f}')
    for which in ('named', 'unnamed'):
        kind = f'certificate {which}'
        print(f'  the certificate read alone, stored {"with" if which == "named" else "without"}'
              f' a name: {phases.median_ms(kind, "total"):.1f} ms, of which '
              f'{phases.median_ms(kind, BARBICAN_REQUESTS) / 1000:.0f} HTTP requests '
              f'to Barbican {phases.median_ms(kind, BARBICAN_HTTP):.1f} ms')
    without = repeated - p(CERT) / 1000
    print(f'  a repeated signed clone less its certificate read: {without * 1000:.1f} ms '
          f'= {without / unsigned:.2f} x unsigned (computed from the phases above)')


def start_lab(run_dir: Path):
    """Ceph (in a thread: it takes longest) beside Keystone then Barbican, then a
    Glance behind Keystone with the rbd store. Returns the services in stop order
    (those that started) and raises what failed."""
    from tools.lab import BarbicanService, CephService, GlanceService, KeystoneService
    ceph = CephService(run_dir=run_dir)
    keystone = KeystoneService(run_dir=run_dir)
    barbican = BarbicanService(keystone, run_dir=run_dir)
    glance = GlanceService(name='glance-bench-sig', keystone=keystone, ceph=ceph,
                           run_dir=run_dir)
    failed: list[BaseException] = []

    def start_ceph():
        try:
            ceph.start()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failed.append(exc)
    thread = threading.Thread(target=start_ceph, name='start-ceph')
    thread.start()
    services = [glance, barbican, keystone, ceph]   # stop order: all, whatever started
    try:
        keystone.start()
        barbican.start()
    finally:
        thread.join()
    if failed:
        raise failed[0]
    glance.start()
    return services, (ceph, keystone, barbican, glance)


def make_pki(keystone):
    import types
    from tools.lab import signing
    ca, ca_key = signing.make_ca()
    cert, key = signing.make_signing_cert(ca, ca_key)
    conf = signing.private_conf(keystone)
    ctx = signing.request_context(keystone, 'nova', 'service')
    # Named, as Glance's signing guide stores it (``openstack secret store --name``);
    # the same certificate without a name, for the context line on what that costs.
    return types.SimpleNamespace(
        key=key, cert=signing.store_certificate(cert, ctx, conf, name='bench signer'),
        unnamed=signing.store_certificate(cert, ctx, conf, name=None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size-mib', type=int, default=1024,
                        help='image size in MiB (default 1 GiB)')
    parser.add_argument('--rounds', type=int, default=5,
                        help='interleaved rounds after a warm-up (median)')
    parser.add_argument('--run-dir', default=None,
                        help='the lab run dir, for its services and work dir '
                             '(default: a fresh directory under .lab/)')
    parser.add_argument('--hash-method', default='SHA-256',
                        help='img_signature_hash_method (SHA-224/256/384/512)')
    args = parser.parse_args()
    if args.size_mib < 1 or args.rounds < 1:
        parser.error('size and rounds must be positive')
    logging.basicConfig(level=logging.ERROR)
    own_dir = args.run_dir is None
    os.makedirs(os.path.join(REPO, '.lab'), exist_ok=True)
    run_dir = Path(args.run_dir or tempfile.mkdtemp(
        prefix='bench-sig-', dir=os.path.join(REPO, '.lab'))).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    need = 3 * args.size_mib * MiB + 1 * GiB    # two fs-store images, a copy, slack
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise SystemExit(f'{run_dir}: {free // GiB} GiB free, the run needs about '
                         f'{need // GiB + 1} GiB')
    os.environ['IH_LAB_RUN_DIR'] = str(run_dir)     # before tools.lab is imported
    hash_size = max(64 * MiB, min(512 * MiB, args.size_mib * MiB))
    env = {'sha512': hashlib_speed(hash_size), 'sha256': hashlib_speed(hash_size, 'sha256'),
           'signature': hashlib_speed(hash_size, args.hash_method.replace('-', '').lower())}
    print(f'environment: {os.cpu_count()} CPUs, hashlib sha512 {env["sha512"] / MiB:.0f} '
          f'MiB/s and sha256 {env["sha256"] / MiB:.0f} MiB/s on one core, load '
          f'{os.getloadavg()[0]:.2f}', flush=True)
    work = Path(tempfile.mkdtemp(prefix='work-', dir=run_dir))
    services: list = []
    bench = None
    left: list[str] = []
    t_start = time.perf_counter()
    try:
        from tools.lab import (BarbicanService, CephService, GlanceService,  # noqa: F401
                               KeystoneService)
        try:
            services, (ceph, keystone, _barbican, glance) = start_lab(run_dir)
        except BaseException:
            # start_lab raised before returning its list: stop whatever started.
            services = [GlanceService(name='glance-bench-sig', run_dir=run_dir),
                        BarbicanService(run_dir=run_dir), KeystoneService(run_dir=run_dir),
                        CephService(run_dir=run_dir)]
            raise
        t_lab = time.perf_counter() - t_start
        bench = Bench(args, work, ceph, keystone, glance, make_pki(keystone))
        bench.make_images()
        setup = time.perf_counter() - t_start
        print(f'lab started in {t_lab:.0f} s, images made in {setup - t_lab:.0f} s',
              flush=True)
        out = run(bench, args)
        report(args, bench, env, out, setup)
    finally:
        if bench is not None:
            try:
                left += bench.cleanup()
            except Exception as exc:  # noqa: BLE001 - keep stopping the lab
                left.append(f'cleanup failed: {exc!r}')
        for svc in services:
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
        print(f'\ntotal run time {time.perf_counter() - t_start:.0f} s')
        if left:
            print('NOT removed:', '; '.join(left))
        else:
            print('every clone, image and file created was removed; lab stopped')
    return 1 if left else 0


if __name__ == '__main__':
    sys.exit(main())
