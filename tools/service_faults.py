"""Seeded trials of real lab services killed in the middle of the handlers' work.

    IH_LAB_RUN_DIR=... IH_LAB_GLUSTER_RUN_DIR=... \\
        .venv/bin/python -m tools.service_faults [--trials 5] [--seed 1] [--faults osd-clone,mon]
        .venv/bin/python -m tools.service_faults --hang [--trials 5] [--max-hold 30]

Faults (each SIGKILL, as a crash; the service is started again after a seeded
outage): ``osd-clone`` (the Ceph OSD during an rbd_clone clone + flatten),
``osd-read`` (the OSD during a stream_copy read of an RBD snapshot), ``mon`` (the
monitor during a clone; a fresh process connects while it is down), ``glance``
(Glance's uWSGI during a download through its image data API), ``keystone``
(Keystone during a download; a new request arrives while it is down), ``tgt``
(tgtd during an iscsi_cor fill job), ``brick`` (the Gluster brick under a
shared_fs overlay while its overlay_fill job copies from it; a volume of our own,
never the shared lab volume).

Hangs (``--hang``, or ``hang-*`` in --faults): the same services SIGSTOPped instead
of killed, so their sockets stay open and nothing answers: ``hang-osd-read``,
``hang-osd-clone``, ``hang-glance``, ``hang-tgt``, ``hang-brick``. The service is
held stopped until the request ends or for a seeded time up to --max-hold (longer
than the configured bounds), then always SIGCONTed (in a finally, also on Ctrl-C or
SIGTERM). A request still running when the service is continued waited out the
hang: that is a missed goal ("unbounded"). A second request made during the hang
(a fresh process) is timed the same way.

Every trial kills at a seeded point of a clean run's duration, measured first in
the same run, and records: the outcome, the seconds from the kill to the error
(the bound), bytes published wrongly (goal: none), what was left (goal: nothing
but a partial a resume needs), and whether the same request succeeded once the
service was back (goal: always). Exit 1 when a goal is missed. Starts its own
Ceph (bluestore, so a killed OSD keeps its data), Keystone, Glance, tgt and Gluster
volume under IH_LAB_RUN_DIR and stops them at the end.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from image_handlers import api  # noqa: E402
from image_handlers.jobs import runner  # noqa: E402
from image_handlers.qemu import img  # noqa: E402
from tools.lab import (CephService, GlanceService, GlusterService,  # noqa: E402
                       KeystoneService, write_fs_marker)
from tools.lab.gluster_volume import GlusterVolume  # noqa: E402
from tools.lab.service import continue_processes  # noqa: E402
from tools.lab.tgt import TgtService  # noqa: E402

MiB = 1 << 20
FAULTS = ('osd-clone', 'osd-read', 'mon', 'glance', 'keystone', 'tgt', 'brick')
HANG_FAULTS = ('hang-osd-read', 'hang-osd-clone', 'hang-glance', 'hang-tgt',
               'hang-brick')
FS_ID = 'faultvol-images'
CLI = os.path.join(os.path.dirname(sys.executable), 'image-handlers')
# The bounds the trials configure (nova.conf below; --rbd-timeout, --read-timeout,
# --retries: copy_retries and [glance] num_retries).
BOUNDS = {'rbd_timeout': 5, 'read_timeout': 3, 'retries': 3}
SCALE = {'size': 1.0, 'outage': 8.0, 'hold': 30.0}  # --size-scale, --max-outage, --max-hold
HARD_CAP = 240.0        # a request still running after this is reported as hung
RECOVERY_PATIENCE = 120.0   # a hang's request is asked again until this long after


@dataclasses.dataclass
class Trial:
    fault: str
    seed: int
    kill_at: float = 0.0        # seconds after the work began (seeded)
    outage: float = 0.0         # seconds the service stayed down (seeded; a hang's
                                # longest hold)
    held: float | None = None   # hang: seconds it was held stopped (ends early
                                # once the requests ended)
    hit: bool | None = None     # hang: the work was still running when it stopped
    recovered_after: float | None = None    # hang: seconds from SIGCONT to the
                                # first success of the same request
    recovery_failures: int = 0  # requests that failed before that
    unbounded: list = dataclasses.field(default_factory=list)  # hang: requests
                                # still waiting when the service was continued
    outcome: str = ''           # 'verified' / 'done', or the error's class
    via: str = ''               # handler@location that provided the disk
    error: str = ''
    to_error: float | None = None   # seconds from the kill to the error
    side: dict = dataclasses.field(default_factory=dict)  # a second request's fate
    restart: float = 0.0        # seconds the service took to serve again
    recovered: bool | None = None   # the same request after the service was back
    recovery: str = ''
    wrongly_published: int = 0
    leftovers: list = dataclasses.field(default_factory=list)
    kept_for_resume: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0


_HELD: set[int] = set()     # pids SIGSTOPped now: main() SIGCONTs them whatever ends it


def hold_stopped(pause: Callable[[], list[int]], resume: Callable[[list[int]], None],
                 longest: float, done: Callable[[], bool],
                 main_done: Callable[[], bool] | None = None) -> tuple[float, bool]:
    """Stop a service (``pause``), keep it stopped until ``done()`` or ``longest``
    seconds, then continue it (``resume``) whatever happens, Ctrl-C included;
    returns the seconds it was held and whether the work was still running when
    the service stopped (the hang hit it; ``main_done``, without the side
    requests that ``done`` also waits for)."""
    pids = pause()
    _HELD.update(pids)
    t0 = time.monotonic()
    try:
        hit = not (main_done or done)()
        while time.monotonic() - t0 < longest and not done():
            time.sleep(0.05)
    finally:
        resume(pids)
        _HELD.difference_update(pids)
    return round(time.monotonic() - t0, 2), hit


def data_of(size: int, seed: int) -> bytes:
    """Deterministic bytes with zero runs (sparse-friendly), as the image."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += (bytes(MiB) if i % 4 == 1 else
                hashlib.sha512(f'{seed}:{i}'.encode()).digest() * (MiB // 64))
        i += 1
    return bytes(out[:size])


def _short(exc: BaseException | str, n: int = 400) -> str:
    text = exc if isinstance(exc, str) else f'{type(exc).__name__}: {exc}'
    return text if len(text) <= n else text[:n] + '...'


class Lab:
    """The services the trials kill (all ours, under IH_LAB_RUN_DIR) and the shared
    glusterd (never killed: only our volume's brick is)."""

    def __init__(self, work: Path, gluster_run_dir: str | None):
        self.work = work
        tag = uuid.uuid4().hex[:6]
        self.ceph = CephService(name='ceph-faults', objectstore='bluestore',
                                daemon_faults=True)
        self.keystone = KeystoneService(name='keystone-faults')
        self.gluster = GlusterService(run_dir=Path(gluster_run_dir)
                                      if gluster_run_dir else None)
        self.volume: GlusterVolume | None = None
        self.volume_name = f'ihfault{tag}'
        self.glance: GlanceService | None = None
        self.tgt = TgtService('tgt-faults')
        self.started: list = []
        self.gluster_was_running = False
        # The machine is shared with other runs: a uWSGI app may load slowly.
        self.keystone.start_timeout = 120.0   # type: ignore[misc]

    def start(self) -> None:
        self.gluster_was_running = self.gluster.is_running()
        for svc in (self.ceph, self.keystone, self.tgt):
            svc.start()
            self.started.append(svc)
        self.gluster.start()
        self.volume = GlusterVolume(self.gluster, self.volume_name,
                                    name='gluster-faultvol').start()
        self.started.append(self.volume)
        # Reads under a fill must reach the brick, not the FUSE client's caches
        # (the image was just written and read through this mount).
        for key in ('performance.io-cache', 'performance.read-ahead',
                    'performance.quick-read'):
            self.volume.set_option(key, 'off')
        write_fs_marker(self.volume.mountpoint, FS_ID)
        mnt = self.volume.mountpoint
        self.glance = GlanceService(
            name='glance-faults', keystone=self.keystone, ceph=self.ceph,
            file_stores={'faultvol': (mnt / 'images', {'id': FS_ID,
                                                       'mountpoint': str(mnt)})})
        self.glance.start_timeout = 120.0   # type: ignore[misc]
        self.glance.start()
        self.started.append(self.glance)
        self.client = self.glance.keystone_client('nova', 'service')

    def stop(self) -> None:
        for svc in reversed(self.started):
            try:
                svc.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others anyway
                print(f'warning: stopping {svc.name}: {exc}', file=sys.stderr)
        if not self.gluster_was_running and os.environ.get('IH_LAB_GLUSTER_RUN_DIR') \
                is None:
            self.gluster.stop()

    # -- images ---------------------------------------------------------------------
    def upload(self, data: bytes, backend: str | None = None) -> str:
        img = self.client.images.create(name=f'fault-{uuid.uuid4().hex[:8]}',
                                        disk_format='raw', container_format='bare')
        self.client.images.upload(img['id'], io.BytesIO(data), image_size=len(data),
                                  backend=backend)
        return img['id']

    def set_location(self, image_id: str, url: str) -> None:
        """Rewrite the image's location in Glance's database (Glance's API refuses
        iscsi:// through PATCH; operators publish LUNs so)."""
        db = sqlite3.connect(self.glance.workdir / 'glance.sqlite')
        with db:
            db.execute('update image_locations set value = ?, meta_data = ? where '
                       'image_id = ? and deleted = 0', (url, '{}', image_id))
        db.close()

    def nova_conf(self, extra: str = '') -> str:
        path = self.work / f'nova-{uuid.uuid4().hex[:6]}.conf'
        path.write_text(
            self.glance.nova_conf()
            + f'\n[libvirt]\nimages_rbd_pool = vms\n'
            f'images_rbd_ceph_conf = {self.ceph.conf_path}\nrbd_user = admin\n'
            f'\n[image_handlers]\nstate_dir = {self.work / "state"}\n'
            'handlers = rbd_clone, shared_fs, iscsi_cor, stream_copy\n'
            f'rbd_connect_timeout = {BOUNDS["rbd_timeout"]}\n'
            f'rbd_op_timeout = {BOUNDS["rbd_timeout"]}\n'
            f'read_timeout = {BOUNDS["read_timeout"]}\n'
            f'connect_timeout = {BOUNDS["read_timeout"]}\n'
            f'copy_retries = {BOUNDS["retries"]}\n'
            'copy_retry_backoff = 0.5\ncopy_retry_backoff_max = 2\n'
            'glance_api_weight = -10\nprogress_interval = 60\n'
            f'shared_fs_mounts = {FS_ID}:{self.volume.mountpoint}\n'
            'shared_fs_methods = reflink, overlay\nshared_fs_fill_overlays = true\n'
            f'iscsi_allowed_portals = {self.tgt.portal}\niscsi_timeout = 3\n'
            + extra + f'\n[glance]\nnum_retries = {BOUNDS["retries"]}\n')
        return str(path)

    # -- checks ---------------------------------------------------------------------
    def rbd_names(self, pool: str = 'vms') -> set[str]:
        out = subprocess.run(['rbd', 'ls', pool], env={**os.environ, **self.ceph.env()},
                             capture_output=True, text=True, timeout=60)
        return set(out.stdout.split())

    def rbd_read(self, pool: str, name: str, size: int) -> bytes:
        tmp = self.work / f'export-{uuid.uuid4().hex[:6]}'
        subprocess.run(['rbd', 'export', f'{pool}/{name}', str(tmp)],
                       env={**os.environ, **self.ceph.env()}, check=True,
                       capture_output=True, timeout=120)
        data = tmp.read_bytes()[:size]
        tmp.unlink()
        return data

    def rbd_remove(self, pool: str, name: str) -> None:
        subprocess.run(['rbd', 'rm', f'{pool}/{name}'], env={**os.environ,
                       **self.ceph.env()}, capture_output=True, timeout=120)


class Work:
    """One request run in a thread, so a service can be killed while it runs."""

    def __init__(self, func: Callable[[], Any]):
        self.result: Any = None
        self.error: BaseException | None = None
        self.ended: float | None = None
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(func,), daemon=True)
        self._thread.start()

    def _run(self, func) -> None:
        try:
            self.result = func()
        except BaseException as exc:  # noqa: BLE001 - reported by the trial
            self.error = exc
        self.ended = time.monotonic()

    def wait(self, timeout: float = HARD_CAP) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _cli_fetch(conf: str, image_id: str, target: str, *extra: str) -> tuple[int, str, float]:
    """The command in a fresh process (a restarted nova-compute): (rc, the error
    it printed or '', seconds)."""
    t0 = time.monotonic()
    proc = subprocess.run([CLI, 'fetch', image_id, target, '--config-file', conf,
                           '--json', *extra], capture_output=True, text=True,
                          timeout=HARD_CAP)
    return proc.returncode, proc.stderr.strip(), time.monotonic() - t0


def _cli_error(out: str) -> str:
    """The error line the command printed (its last non-JSON line)."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return lines[-1] if lines else ''


class Trials:
    def __init__(self, lab: Lab, seed: int, work: Path):
        self.lab = lab
        self.seed = seed
        self.work = work
        self.conf_path = lab.nova_conf()
        self.conf = api.make_conf([self.conf_path])
        self.baseline: dict[str, float] = {}
        self.images: dict[str, tuple[str, bytes]] = {}

    # -- shared steps -----------------------------------------------------------------
    def _rng(self, fault: str, n: int) -> random.Random:
        return random.Random(f'{self.seed}:{fault}:{n}')

    def _kill_point(self, fault: str, rng: random.Random) -> float:
        base = self.baseline.get(fault) or self.baseline[_base(fault)]
        # A hang in the first half: a stop that comes after the work ended tests
        # nothing (the kills take the whole range: a kill then still matters).
        high = 0.5 if fault.startswith('hang-') else 0.95
        return round(rng.uniform(0.05, high) * base, 3)

    @staticmethod
    def _hold(rng: random.Random) -> float:
        """Longest seconds a hang is held: seeded, 3/4 of --max-hold up to it."""
        return round(rng.uniform(0.75, 1.0) * SCALE['hold'], 2)

    @staticmethod
    def _outage(rng: random.Random, low: float) -> float:
        """Seconds the service stays down: seeded, up to --max-outage."""
        return round(rng.uniform(low, max(low, SCALE['outage'])), 2)

    def _finish(self, trial: Trial, work: Work, killed_at: float) -> None:
        if not work.wait():
            trial.outcome = 'hung'
            trial.error = f'still running {HARD_CAP:.0f} s after the kill'
            return
        if work.error is None:
            trial.outcome = 'verified'
            trial.via = f'{work.result.handler}@{work.result.location}'
        else:
            trial.outcome = type(work.error).__name__
            trial.error = _short(work.error)
            trial.to_error = round(work.ended - killed_at, 2)

    def _image(self, key: str, size: int, backend: str | None) -> tuple[str, bytes]:
        size = max(4 * MiB, int(size * SCALE['size']) // MiB * MiB)
        if key not in self.images:
            data = data_of(size, int(hashlib.md5(key.encode()).hexdigest()[:6], 16))
            self.images[key] = (self.lab.upload(data, backend), data)
        return self.images[key]

    def _file_target(self, trial: Trial) -> str:
        d = self.work / 'targets' / f'{trial.fault}-{trial.seed}'
        d.mkdir(parents=True, exist_ok=True)
        return str(d / 'disk')

    def _check_file(self, trial: Trial, target: str, data: bytes,
                    partial_ok: bool = True) -> None:
        """Bytes at the target that are not the image's count as wrongly
        published; anything else in its directory is a leftover (a partial and its
        checkpoint are kept only when a resume needs them)."""
        if os.path.exists(target):
            with open(target, 'rb') as f:
                got = f.read(len(data) + 1)
            if got != data:
                trial.wrongly_published += len(got)
        for name in sorted(os.listdir(os.path.dirname(target))):
            if name == os.path.basename(target):
                continue
            path = os.path.join(os.path.dirname(target), name)
            if partial_ok and ('.part' in name or 'checkpoint' in name):
                trial.kept_for_resume.append(name)
            else:
                trial.leftovers.append(path)

    def _jobs_left(self, trial: Trial) -> None:
        for job in runner.store(self.conf).all():
            if not job.finished:
                trial.leftovers.append(f'job {job.id} {job.state}')

    # -- rbd: OSD during clone, OSD during read, monitor ----------------------------
    def setup_rbd(self) -> None:
        image_id, data = self._image('rbd', 48 * MiB, 'ceph')
        t0 = time.monotonic()
        name = f'base-{uuid.uuid4().hex[:6]}'
        api.fetch(self.conf, image_id, f'rbd:vms/{name}', purpose='unshelve')
        self.baseline['osd-clone'] = self.baseline['mon'] = time.monotonic() - t0
        self.lab.rbd_remove('vms', name)
        target = str(self.work / 'baseline-read')
        t0 = time.monotonic()
        api.fetch(self.conf, image_id, target)
        self.baseline['osd-read'] = time.monotonic() - t0
        os.unlink(target)
        t0 = time.monotonic()
        api.fetch(self.read_conf, image_id, target)
        self.baseline['hang-osd-read'] = time.monotonic() - t0
        os.unlink(target)

    @property
    def read_conf(self):
        """Reads at 8 MiB/s: the whole of a hang-osd-read lands mid-read (a read
        at full speed ends before the OSD is stopped)."""
        if not hasattr(self, '_read'):
            self._read = api.make_conf([self.lab.nova_conf('bandwidth_limit = 8388608\n')])
        return self._read

    def trial_osd_clone(self, n: int) -> Trial:
        return self._rbd_trial('osd-clone', n, 'osd', clone=True)

    def trial_osd_read(self, n: int) -> Trial:
        return self._rbd_trial('osd-read', n, 'osd', clone=False)

    def trial_mon(self, n: int) -> Trial:
        return self._rbd_trial('mon', n, 'mon', clone=True)

    def trial_hang_osd_read(self, n: int) -> Trial:
        return self._rbd_trial('hang-osd-read', n, 'osd', clone=False)

    def trial_hang_osd_clone(self, n: int) -> Trial:
        return self._rbd_trial('hang-osd-clone', n, 'osd', clone=True)

    def _rbd_trial(self, fault: str, n: int, daemon: str, clone: bool) -> Trial:
        rng = self._rng(fault, n)
        hang = fault.startswith('hang-')
        trial = Trial(fault, n, kill_at=self._kill_point(fault, rng),
                      outage=self._hold(rng) if hang else self._outage(rng, 1.0))
        image_id, data = self.images['rbd']
        name = f'disk-{fault}-{n}-{uuid.uuid4().hex[:4]}'
        target = f'rbd:vms/{name}' if clone else self._file_target(trial)
        purpose = 'unshelve' if clone else 'spawn'       # clone + flatten: a window
        before = self.lab.rbd_names()
        conf = self.read_conf if hang and not clone else self.conf
        work = Work(lambda: api.fetch(conf, image_id, target, purpose=purpose))
        time.sleep(max(0.0, work.started + trial.kill_at - time.monotonic()))
        killed = time.monotonic()
        if hang:
            ceph = self.lab.ceph
            trial.held, trial.hit = hold_stopped(lambda: ceph.pause_daemon(daemon),
                                      ceph.resume_daemon, trial.outage,
                                      lambda: work.ended is not None)
            if work.ended is None:
                trial.unbounded.append('the request')
            continued = time.monotonic()
            trial.restart = ceph.wait_serving(daemon)
            self._finish(trial, work, killed)
        else:
            continued = None
            self._rbd_kill(trial, work, daemon, name, image_id, killed)
        self._rbd_check(trial, name, before, image_id, target, purpose, data, clone,
                        daemon, continued)
        return trial

    def _rbd_kill(self, trial: Trial, work: Work, daemon: str, name: str,
                  image_id: str, killed: float) -> None:
        self.lab.ceph.kill_daemon(daemon)
        if daemon == 'mon':     # a process that connects now (nova-compute restarting)
            side_target = f'rbd:vms/{name}-fresh'
            rc, out, secs = _cli_fetch(self.conf_path, image_id, side_target)
            trial.side = {'request': 'fresh process while the monitor is down',
                          'rc': rc, 'seconds': round(secs, 2),
                          'error': _short(_cli_error(out), 1500) if rc else ''}
        self._finish(trial, work, killed)
        time.sleep(max(0.0, killed + trial.outage - time.monotonic()))
        trial.restart = self.lab.ceph.start_daemon(daemon)

    def _rbd_check(self, trial: Trial, name: str, before: set[str], image_id: str,
                   target: str, purpose: str, data: bytes, clone: bool,
                   daemon: str, continued: float | None = None) -> None:
        """What the request (and its recovery) published and left."""
        made = self.lab.rbd_names() - before
        if clone and trial.outcome != 'verified' and name in made:
            trial.wrongly_published += len(data)    # a disk that a failure published
        # What a failure could not remove while the cluster was away, for the next
        # request to remove (it must, below).
        trial.kept_for_resume += sorted(f'vms/{x}' for x in made if x != name
                                        and not x.endswith('-fresh'))
        if not clone:
            self._check_file(trial, target, data)
        published = {name} if trial.outcome == 'verified' else set()
        if trial.outcome != 'verified' or daemon == 'mon':
            again = name if trial.outcome != 'verified' else f'{name}-again'
            self._recover(trial, image_id, target if trial.outcome != 'verified'
                          else f'rbd:vms/{again}', purpose, data, clone,
                          since=continued)
            if trial.recovered:
                published.add(again)
        if trial.side.get('rc') == 0:
            published.add(f'{name}-fresh')
        if clone:
            for disk in sorted(published):
                if self.lab.rbd_read('vms', disk, len(data)) != data:
                    trial.wrongly_published += len(data)
        elif trial.recovered and Path(target).read_bytes() != data:
            trial.wrongly_published += len(data)
        final = self.lab.rbd_names() - before
        trial.leftovers += sorted(f'vms/{x}' for x in final - published)
        for x in final:
            self.lab.rbd_remove('vms', x)
        if not clone:
            shutil.rmtree(os.path.dirname(target), ignore_errors=True)

    def _recover(self, trial: Trial, image_id: str, target: str, purpose: str,
                 data: bytes, clone: bool, conf=None, since: float | None = None
                 ) -> None:
        """The same request once the service is back, in this process (as in a
        nova-compute that lived through the outage). With ``since`` (a hang: the
        time the service was continued) a failed request is asked again until
        RECOVERY_PATIENCE seconds after it, and the seconds to the first success
        are recorded (``recovered_after``)."""
        while True:
            try:
                result = api.fetch(conf or self.conf, image_id, target, purpose=purpose)
                break
            except Exception as exc:  # noqa: BLE001 - reported
                trial.recovered = False
                trial.recovery = _short(exc, 1500)
                trial.recovery_failures += 1
                if since is None or time.monotonic() - since > RECOVERY_PATIENCE:
                    return
                time.sleep(2.0)
        if since is not None:
            trial.recovered_after = round(time.monotonic() - since, 2)
        trial.recovered = True
        trial.recovery = f'{result.handler}@{result.location}'
        got = (self.lab.rbd_read('vms', target.split('/', 1)[1], len(data)) if clone
               else Path(target).read_bytes())
        if got != data:
            trial.wrongly_published += len(got)
            trial.recovered = False

    # -- Glance and Keystone during a download ---------------------------------------
    def setup_http(self) -> None:
        image_id, _data = self._image('http', 96 * MiB, None)
        target = str(self.work / 'baseline-http')
        t0 = time.monotonic()
        api.fetch(self.slow_conf, image_id, target)
        self.baseline['glance'] = self.baseline['keystone'] = time.monotonic() - t0
        os.unlink(target)

    @property
    def slow_conf(self):
        """Downloads at 32 MiB/s, so a kill lands mid-download."""
        if not hasattr(self, '_slow'):
            self._slow_path = self.lab.nova_conf('bandwidth_limit = 33554432\n')
            self._slow = api.make_conf([self._slow_path])
        return self._slow

    def trial_glance(self, n: int) -> Trial:
        return self._http_trial('glance', n, self.lab.glance)

    def trial_keystone(self, n: int) -> Trial:
        return self._http_trial('keystone', n, self.lab.keystone)

    def trial_hang_glance(self, n: int) -> Trial:
        return self._http_trial('hang-glance', n, self.lab.glance)

    def _http_trial(self, fault: str, n: int, service) -> Trial:
        rng = self._rng(fault, n)
        hang = fault.startswith('hang-')
        trial = Trial(fault, n, kill_at=self._kill_point(fault, rng),
                      outage=self._hold(rng) if hang else self._outage(rng, 0.5))
        image_id, data = self.images['http']
        target = self._file_target(trial)
        work = Work(lambda: api.fetch(self.slow_conf, image_id, target))
        time.sleep(max(0.0, work.started + trial.kill_at - time.monotonic()))
        killed = time.monotonic()
        side_target = target + '-new'
        if hang:
            side: Work | None = None

            def start_side() -> list[int]:
                nonlocal side
                pids = service.pause()
                side = Work(lambda: _cli_fetch(self.conf_path, image_id, side_target))
                return pids

            trial.held, trial.hit = hold_stopped(
                start_side, service.resume, trial.outage,
                lambda: work.ended is not None and side.ended is not None,
                lambda: work.ended is not None)
            trial.unbounded += [what for what, w in (('the request', work),
                                                     ('a new request', side))
                                if w.ended is None]
            side.wait()
            rc, out, secs = side.result
            state = 'hangs'
        else:
            service.kill()
            rc, out, secs = _cli_fetch(self.conf_path, image_id, side_target)
            state = 'is down'
        trial.side = {'request': f'new request while {service.name} {state}',
                      'rc': rc, 'seconds': round(secs, 2),
                      'error': _short(_cli_error(out), 1500) if rc else ''}
        if not hang:
            time.sleep(max(0.0, killed + trial.outage - time.monotonic()))
            t0 = time.monotonic()
            service.restart()
            trial.restart = round(time.monotonic() - t0, 2)
        self._finish(trial, work, killed)
        if rc == 0 and Path(side_target).read_bytes() != data:
            trial.wrongly_published += os.path.getsize(side_target)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(side_target)
        self._check_file(trial, target, data)
        if trial.outcome != 'verified':
            self._recover(trial, image_id, target, 'spawn', data, clone=False,
                          conf=self.slow_conf)
        # the side request, again, once the service is back
        rc2, out2, _ = _cli_fetch(self.conf_path, image_id, side_target)
        trial.side['after_restart'] = 'verified' if rc2 == 0 else _short(_cli_error(out2))
        if rc2 == 0 and Path(side_target).read_bytes() != data:
            trial.wrongly_published += os.path.getsize(side_target)
        if rc2 != 0:
            trial.recovered = False
        shutil.rmtree(os.path.dirname(target), ignore_errors=True)
        return trial

    def _fill_started(self, conf, job: str) -> float:
        """Wait until the job's worker runs it; the time it did."""
        deadline = time.monotonic() + HARD_CAP
        jobs = runner.store(conf)
        while time.monotonic() < deadline:
            rec = jobs.get(job)
            if rec.state != 'queued' or rec.done_bytes:     # its worker began
                return time.monotonic()
            time.sleep(0.02)
        raise RuntimeError(f'job {job} did not start in {HARD_CAP:.0f} s')

    def _baseline_fill(self, fault: str, conf, image_id: str, target: str) -> None:
        """Seconds from the fill's start (its worker running) to its end, in a
        clean run."""
        job = api.fetch(conf, image_id, target, disk_format='qcow2').job
        started = self._fill_started(conf, job)
        done = runner.wait(conf, job, timeout=HARD_CAP)
        if done.state != 'done':
            raise RuntimeError(f'baseline {fault} fill failed: {done.error}')
        self.baseline[fault] = time.monotonic() - started
        os.unlink(target)

    # -- tgt during an iscsi_cor fill ---------------------------------------------------
    def setup_tgt(self) -> None:
        image_id, data = self._image('lun', 64 * MiB, None)
        backing = self.work / 'lun.raw'
        backing.write_bytes(data)
        export = self.lab.tgt.export('faults', backing)
        self.lab.set_location(image_id, export.url)
        self.lun_conf_path = self.lab.nova_conf('bandwidth_limit = 16777216\n'
                                                'copy_retries = 1\n')
        self.lun_conf = api.make_conf([self.lun_conf_path])
        self._baseline_fill('tgt', self.lun_conf, image_id,
                            str(self.work / 'baseline-lun.qcow2'))

    def trial_hang_tgt(self, n: int) -> Trial:
        return self.trial_tgt(n, 'hang-tgt')

    def _job_ended(self, conf, job: str) -> Callable[[], bool]:
        jobs = runner.store(conf)
        return lambda: jobs.get(job).finished

    def trial_tgt(self, n: int, fault: str = 'tgt') -> Trial:
        rng = self._rng(fault, n)
        hang = fault.startswith('hang-')
        trial = Trial(fault, n, kill_at=self._kill_point(fault, rng),
                      outage=self._hold(rng) if hang else self._outage(rng, 0.5))
        image_id, data = self.images['lun']
        target = self._file_target(trial) + '.qcow2'
        job = api.fetch(self.lun_conf, image_id, target, disk_format='qcow2').job
        t0 = self._fill_started(self.lun_conf, job)
        time.sleep(max(0.0, t0 + trial.kill_at - time.monotonic()))
        killed, killed_wall = time.monotonic(), time.time()
        if hang:
            ended = self._job_ended(self.lun_conf, job)
            trial.held, trial.hit = hold_stopped(self.lab.tgt.pause, self.lab.tgt.resume,
                                      trial.outage, ended)
            if not ended():
                trial.unbounded.append('the fill job')
        else:
            self.lab.tgt.kill()
            time.sleep(max(0.0, killed + trial.outage - time.monotonic()))
            t1 = time.monotonic()
            self.lab.tgt.restart()
            trial.restart = round(time.monotonic() - t1, 2)
        done = runner.wait(self.lun_conf, job, timeout=HARD_CAP)
        trial.outcome = 'done' if done.state == 'done' else done.state
        if done.state != 'done':
            trial.error = _short(done.error or '', 1500)
            trial.to_error = round(done.updated - killed_wall, 2)
            again = runner.retry(self.lun_conf, job)
            final = runner.wait(self.lun_conf, again.id, timeout=HARD_CAP)
            trial.recovered = final.state == 'done'
            trial.recovery = f'jobs resume: {final.state}'
        self._check_disk(trial, target, data)
        self._jobs_left(trial)
        self._procs_left(trial, target)
        shutil.rmtree(os.path.dirname(target), ignore_errors=True)
        return trial

    def _check_disk(self, trial: Trial, disk: str, data: bytes) -> None:
        """The finished disk must be standalone and read as the image."""
        info = json.loads(subprocess.run(['qemu-img', 'info', '-U', '--output=json',
                                          disk], capture_output=True, text=True,
                                         check=True).stdout)
        if info.get('backing-filename'):
            trial.leftovers.append(f'{disk} still backed by {info["backing-filename"]}')
        out = disk + '.read'
        subprocess.run(['qemu-img', 'convert', '-U', '-O', 'raw', disk, out],
                       check=True, capture_output=True)
        got = Path(out).read_bytes()[:len(data)]
        os.unlink(out)
        if got != data:
            trial.wrongly_published += len(got)
        for name in os.listdir(os.path.dirname(disk)):
            if name != os.path.basename(disk):
                trial.leftovers.append(name)

    @staticmethod
    def _wait_procs_gone(disk: str, timeout: float = 60.0) -> None:
        """Until no process names ``disk`` (it holds qemu's lock on it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = Trial('probe', 0)
            Trials._procs_left(probe, disk)
            if not probe.leftovers:
                return
            time.sleep(0.1)

    @staticmethod
    def _procs_left(trial: Trial, disk: str) -> None:
        for entry in Path('/proc').iterdir():
            if entry.name.isdigit():
                try:
                    cmd = (entry / 'cmdline').read_bytes()
                except OSError:
                    continue
                if disk.encode() in cmd:
                    trial.leftovers.append(f'process {entry.name}: '
                                           f'{cmd.replace(bytes(1), b" ")[:120]!r}')

    # -- the Gluster brick under an overlay ----------------------------------------------
    def setup_brick(self) -> None:
        image_id, data = self._image('gluster', 256 * MiB, 'faultvol')
        self.fill_conf_path = self.lab.nova_conf()
        self.fill_conf = api.make_conf([self.fill_conf_path])
        self._baseline_fill('brick', self.fill_conf, image_id,
                            str(self.work / 'baseline-overlay.qcow2'))

    def trial_hang_brick(self, n: int) -> Trial:
        return self.trial_brick(n, 'hang-brick')

    def trial_brick(self, n: int, fault: str = 'brick') -> Trial:
        rng = self._rng(fault, n)
        hang = fault.startswith('hang-')
        trial = Trial(fault, n, kill_at=self._kill_point(fault, rng),
                      outage=self._hold(rng) if hang else self._outage(rng, 0.5))
        image_id, data = self.images['gluster']
        target = self._file_target(trial) + '.qcow2'
        vol = self.lab.volume
        job = api.fetch(self.fill_conf, image_id, target, disk_format='qcow2').job
        if hang:
            # The overlay's backing file was read through this mount before: drop
            # its cached pages so the fill asks the brick. The hang lands at a
            # seeded point of the fill's own duration after the request returned
            # (the worker starting, or the fill reading).
            vol.drop_cached(Path(img.info(target)['full-backing-filename']))
            t0 = time.monotonic()
        else:
            t0 = self._fill_started(self.fill_conf, job)
        time.sleep(max(0.0, t0 + trial.kill_at - time.monotonic()))
        killed, killed_wall = time.monotonic(), time.time()
        side_dir = Path(target).parent.with_name(Path(target).parent.name + '-side')
        side_dir.mkdir()
        side_target = str(side_dir / 'disk.qcow2')

        def side_request() -> Work:
            return Work(lambda: api.fetch(self.fill_conf, image_id, side_target,
                                          disk_format='qcow2'))
        if hang:
            ended = self._job_ended(self.fill_conf, job)
            work: Work | None = None

            def pause() -> list[int]:
                nonlocal work
                pids = vol.pause_brick()
                work = side_request()
                return pids

            trial.held, trial.hit = hold_stopped(pause, vol.resume_brick, trial.outage,
                                                 lambda: ended() and work.ended is not None,
                                                 ended)
            trial.unbounded += (['the fill job'] if not ended() else []) + (
                ['a new disk'] if work.ended is None else [])
        else:
            vol.kill_brick()
            work = side_request()
        work.wait()
        state = 'hangs' if hang else 'is down'
        trial.side = {'request': f'new disk while the brick {state}',
                      'rc': 0 if work.error is None else 1,
                      'seconds': round(work.ended - work.started, 2),
                      'error': _short(work.error, 1500) if work.error else ''}
        if work.error is None:
            runner.wait(self.fill_conf, work.result.job, timeout=HARD_CAP)
        if not hang:
            time.sleep(max(0.0, killed + trial.outage - time.monotonic()))
            trial.restart = vol.start_brick()
        done = runner.wait(self.fill_conf, job, timeout=HARD_CAP)
        trial.outcome = 'done' if done.state == 'done' else done.state
        if done.state != 'done':
            trial.error = _short(done.error or '', 1500)
            trial.to_error = round(done.updated - killed_wall, 2)
            if hang:    # a qemu-img blocked on the hung mount ends once it answers
                self._wait_procs_gone(target)
            again = runner.retry(self.fill_conf, job)
            final = runner.wait(self.fill_conf, again.id, timeout=HARD_CAP)
            trial.recovered = final.state == 'done'
            trial.recovery = f'jobs resume: {final.state}'
        if os.path.exists(side_target):
            os.unlink(side_target)
        work2 = Work(lambda: api.fetch(self.fill_conf, image_id, side_target,
                                       disk_format='qcow2'))
        work2.wait()
        if work2.error is not None:
            trial.recovered = False
            trial.side['after_restart'] = _short(work2.error)
        else:
            runner.wait(self.fill_conf, work2.result.job, timeout=HARD_CAP)
            trial.side['after_restart'] = 'done'
            self._check_disk(trial, side_target, data)
            os.unlink(side_target)
        self._check_disk(trial, target, data)
        self._jobs_left(trial)
        self._procs_left(trial, target)
        shutil.rmtree(os.path.dirname(target), ignore_errors=True)
        shutil.rmtree(side_dir, ignore_errors=True)
        return trial


SETUP = {'osd-clone': 'setup_rbd', 'osd-read': 'setup_rbd', 'mon': 'setup_rbd',
         'glance': 'setup_http', 'keystone': 'setup_http', 'tgt': 'setup_tgt',
         'brick': 'setup_brick'}


def _base(fault: str) -> str:
    """The kill fault a hang fault mirrors (its setup and baseline)."""
    return fault[len('hang-'):] if fault.startswith('hang-') else fault


def summarise(trials: list[Trial], baseline: dict[str, float]) -> dict:
    by_fault = collections.defaultdict(list)
    for t in trials:
        by_fault[t.fault].append(t)
    report = {}
    for fault, rows in by_fault.items():
        errors = [t.to_error for t in rows if t.to_error is not None]
        sides = [t.side['seconds'] for t in rows if t.side.get('rc')]
        report[fault] = {
            'trials': len(rows),
            'outcomes': dict(collections.Counter(t.outcome for t in rows)),
            'to_error_max': max(errors) if errors else None,
            'side_error_max': max(sides) if sides else None,
            'not_recovered': sum(1 for t in rows if t.recovered is False),
            'recovered_after_max': max((t.recovered_after for t in rows
                                        if t.recovered_after is not None), default=None),
            'recovery_failures': sum(t.recovery_failures for t in rows),
            'hung': sum(1 for t in rows if t.outcome == 'hung'),
            'unbounded': [f'{t.seed}: {x}' for t in rows for x in t.unbounded],
            'missed': sum(1 for t in rows if t.hit is False),
            'held_max': max((t.held for t in rows if t.held is not None),
                            default=None),
            'unclear': sum(1 for t in rows if t.outcome == 'failed'
                           and 'jobs resume' not in t.error),
            'wrongly_published_bytes': sum(t.wrongly_published for t in rows),
            'leftovers': [x for t in rows for x in t.leftovers],
            'kept_for_resume': sum(len(t.kept_for_resume) for t in rows),
            'restart_max': max(t.restart for t in rows),
            'baseline_seconds': round(baseline.get(fault, 0.0), 2),
            'errors': sorted({t.error.split(':', 1)[0] for t in rows if t.error}),
        }
    return report


def goals_missed(report: dict) -> list[str]:
    missed = []
    for fault, r in report.items():
        if r['wrongly_published_bytes']:
            missed.append(f'{fault}: {r["wrongly_published_bytes"]} bytes published wrongly')
        if r['leftovers']:
            missed.append(f'{fault}: left {r["leftovers"]}')
        if r['not_recovered']:
            missed.append(f'{fault}: {r["not_recovered"]} trial(s) not recovered once '
                          'the service was back')
        if r['hung']:
            missed.append(f'{fault}: {r["hung"]} request(s) hung')
        if r.get('missed'):
            missed.append(f'{fault}: {r["missed"]} hang(s) came after the work had '
                          'ended (nothing tested)')
        if r['unbounded']:
            missed.append(f'{fault}: still waiting when the service was continued '
                          f'(no bound): {r["unbounded"]}')
        if r['unclear']:
            missed.append(f'{fault}: {r["unclear"]} failed job(s) did not say how to '
                          'continue ("image-handlers jobs resume ID")')
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--trials', type=int, default=5, help='trials per fault')
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--faults', default=None,
                        help=f'comma list of {", ".join(FAULTS + HANG_FAULTS)} '
                             '(default: the kills, or with --hang the hangs)')
    parser.add_argument('--hang', action='store_true',
                        help='the hang faults (SIGSTOP, then SIGCONT) by default')
    parser.add_argument('--max-hold', type=float, default=30.0,
                        help='longest seeded hold of a hung service, seconds')
    parser.add_argument('--json', help='write the report (and every trial) here')
    parser.add_argument('--rbd-timeout', type=int, default=5,
                        help='[image_handlers] rbd_connect_timeout and rbd_op_timeout')
    parser.add_argument('--read-timeout', type=int, default=3,
                        help='[image_handlers] read_timeout and connect_timeout')
    parser.add_argument('--retries', type=int, default=3,
                        help='[image_handlers] copy_retries and [glance] num_retries')
    parser.add_argument('--size-scale', type=float, default=1.0,
                        help='scale the images (48-256 MiB at 1.0)')
    parser.add_argument('--max-outage', type=float, default=8.0,
                        help='longest seeded outage, seconds')
    parser.add_argument('--verbose', action='store_true',
                        help="show the handlers' warnings (every retry)")
    args = parser.parse_args(argv)
    args.command = 'python -m tools.service_faults ' + ' '.join(
        sys.argv[1:] if argv is None else argv)
    if args.faults is None:
        args.faults = ','.join(HANG_FAULTS if args.hang else FAULTS)
    faults = [f for f in args.faults.split(',') if f]
    unknown = sorted(set(faults) - set(FAULTS + HANG_FAULTS))
    if unknown:
        parser.error(f'unknown faults {unknown} (known: '
                     f'{", ".join(FAULTS + HANG_FAULTS)})')
    BOUNDS.update(rbd_timeout=args.rbd_timeout, read_timeout=args.read_timeout,
                  retries=args.retries)
    SCALE.update(size=args.size_scale, outage=args.max_outage, hold=args.max_hold)
    quiet = logging.getLogger('image_handlers')
    level = quiet.level
    if not args.verbose:
        quiet.setLevel(logging.CRITICAL)
    term = None
    if threading.current_thread() is threading.main_thread():
        term = signal.signal(signal.SIGTERM, _terminated)
    try:
        return _run(args, faults)
    finally:
        held = sorted(_HELD)
        if held:    # whatever ended the run, nothing we stopped stays stopped
            continue_processes(held)
            _HELD.clear()
        if term is not None:
            signal.signal(signal.SIGTERM, term)
        quiet.setLevel(level)       # main() may run inside a test session


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt(f'signal {signum}')


def _run(args, faults: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix='service-faults-'))
    lab = Lab(work, os.environ.get('IH_LAB_GLUSTER_RUN_DIR'))
    trials: list[Trial] = []
    t_start = time.monotonic()
    try:
        lab.start()
        runs = Trials(lab, args.seed, work)
        done_setups = set()
        for fault in faults:
            setup = SETUP[_base(fault)]
            if setup not in done_setups:
                getattr(runs, setup)()
                done_setups.add(setup)
            for n in range(args.trials):
                t0 = time.monotonic()
                trial = getattr(runs, 'trial_' + fault.replace('-', '_'))(
                    args.seed * 1000 + n)
                trial.seconds = round(time.monotonic() - t0, 1)
                trials.append(trial)
                if args.verbose:
                    print(json.dumps(dataclasses.asdict(trial)), flush=True)
        baseline = runs.baseline
    finally:
        lab.stop()
        shutil.rmtree(work, ignore_errors=True)
    report = summarise(trials, baseline)
    print(f'service faults: {args.trials} trial(s) per fault, seed {args.seed}, '
          f'{time.monotonic() - t_start:.0f} s; bounds configured: rbd connect/op '
          f'{BOUNDS["rbd_timeout"]} s, read_timeout {BOUNDS["read_timeout"]} s, '
          f'retries {BOUNDS["retries"]}')
    print(f'{"fault":<14} {"trials":>6}  {"outcomes":<34} {"to error max":>12} '
          f'{"side err max":>12} {"recovered":>9} {"wrong":>5} {"left":>4} '
          f'{"restart max":>11} {"held max":>9} {"unbounded":>9} {"back after max":>14}')
    for fault, r in report.items():
        outcomes = ', '.join(f'{k} {v}' for k, v in sorted(r['outcomes'].items()))
        fmt = (lambda v: f'{v:.2f} s' if v is not None else '-')
        print(f'{fault:<14} {r["trials"]:>6}  {outcomes:<34} {fmt(r["to_error_max"]):>12} '
              f'{fmt(r["side_error_max"]):>12} '
              f'{r["trials"] - r["not_recovered"]:>4}/{r["trials"]:<4} '
              f'{r["wrongly_published_bytes"]:>5} {len(r["leftovers"]):>4} '
              f'{r["restart_max"]:>9.2f} s {fmt(r["held_max"]):>9} '
              f'{len(r["unbounded"]):>9} {fmt(r["recovered_after_max"]):>14}')
    missed = goals_missed(report)
    print('goals: ' + ('MET (nothing published wrongly, nothing left, every request '
                       'succeeded once the service was back, no request hung'
                       + (', every request in a hang ended before the service '
                          'was continued' if any(f.startswith('hang-') for f in
                                                 report) else '') + ')'
                       if not missed else 'MISSED: ' + '; '.join(missed)))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'report': report, 'trials': [dataclasses.asdict(t) for t in trials],
                       'baseline': baseline, 'bounds': BOUNDS,
                       'command': args.command}, f, indent=1)
    return 1 if missed else 0


if __name__ == '__main__':
    sys.exit(main())
