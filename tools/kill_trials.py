"""Seeded kill -9 trials: a copy, or a fill job, SIGKILLed at a random moment, then
asked again the way an operator (or Nova) would: it must resume and verify.

    .venv/bin/python -m tools.kill_trials [--trials 50] [--seed 1] [--kinds copy,fill]
                                          [--json F]

Kinds:

- ``copy``: ``image-handlers fetch IMAGE TARGET`` (stream_copy, Nova's path: image
  lock, checkpoints, hash check, publish by link) of a Glance image whose location is
  a file on the lab's nginx. The process is SIGKILLed at a seeded random moment: a
  random time over the whole run (start-up included), a random byte offset reached
  in the partial file, or just as the last bytes are in (the final hash check, sync
  and link). The same command is then run again: it must resume from the checkpoint
  (or reuse a target the killed run had published, verifying it) and the target
  must hash to the image.
- ``fill``: ``image-handlers fetch IMAGE DISK --disk-format qcow2`` (iscsi_cor: a
  qcow2 overlay over a read-only LUN of the lab's tgt) starts a ``lun_fill`` job in
  a detached worker; the worker alone (not its process group) is SIGKILLed at a
  random moment, then ``image-handlers jobs resume`` starts it again, as the Nova
  hooks do. The job must end ``done``, the disk must have no backing file and read
  as the image, and nothing may stay behind (worker or qemu-nbd processes, iSCSI
  sessions, hand-over flags, held locks).

Per kind it prints trials, where the kill landed, outcomes, bytes published wrongly
(goal: none), bytes fetched again (goal: at most two checkpoint intervals for
a copy; nothing but the reads in flight for a fill) and
leftovers after the retry (goal: none). Exit 1 when a goal is missed. Starts and
stops its own nginx, Glance and tgt under IH_LAB_RUN_DIR.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools.lab.glance import GlanceService  # noqa: E402
from tools.lab.nginx import NginxService  # noqa: E402
from tools.lab.tgt import TgtService  # noqa: E402

MiB = 1 << 20
KINDS = ('copy', 'fill')
CHECKPOINT = 1 * MiB            # [image_handlers] checkpoint_interval (its minimum)
BUFFER = 256 * 1024             # copy_buffer_size
COPY_RATE = 12 * MiB            # bandwidth_limit: a copy spans about a second
FILL_RATE = 8 * MiB
CLI = os.path.join(os.path.dirname(sys.executable), 'image-handlers')
COPY_MOMENTS = ('time', 'offset', 'final')
# A retry's good endings: resumed from a checkpoint, restarted (killed before one
# was taken), reused (another run published it while this one waited), kept (the
# killed run had published it: the same request refuses to overwrite a disk), and
# a fill job that ended before the kill came.
GOOD = ('resumed', 'restarted', 'reused', 'kept (published before the kill)',
        'done before kill', 'restarted (source ignores ranges)')
# The killed copy read through Glance's image data API, which ignores Range for an
# image in its http store (Glance 33): the retry resumes there (the partial's own
# source goes first) and must start over. Verified, but the kept bytes are fetched
# again; counted apart from the engine's own re-fetch goal.
NO_RANGES = 'restarted (source ignores ranges)'


@dataclasses.dataclass
class Trial:
    kind: str
    seed: int
    moment: str                 # how the kill moment was drawn
    at: float                   # the drawn time (s) or byte offset
    phase: str = ''             # where the kill landed, read from disk afterwards
    outcome: str = ''           # 'resumed', 'reused', 'restarted', or what failed
    error: str = ''
    wrongly_published: int = 0  # bytes at the target that are not the image's
    refetched: int = 0          # bytes fetched again (see the kind's notes)
    served_extra: int = 0       # bytes the server sent beyond the image, both runs
    resumed_from: int = 0
    leftovers: list[str] = dataclasses.field(default_factory=list)
    note: str = ''              # what the retry said about resuming
    seconds: float = 0.0


def image(size: int, seed: int) -> bytes:
    """Random bytes with 64 KiB holes: the copy's sparse writer skips them."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += bytes(64 * 1024) if rng.random() < 0.3 else rng.randbytes(64 * 1024)
    return bytes(out[:size])


def last_data_end(data: bytes) -> int:
    """Where the last non-zero 4 KiB block ends: the partial's size once the last
    bytes that are not a hole were written."""
    end = len(data)
    while end > 0 and not any(data[max(0, end - 4096):end]):
        end -= 4096
    return max(0, end)


# -- the lab ---------------------------------------------------------------------------

@dataclasses.dataclass
class Lab:
    nginx: NginxService
    glance: GlanceService
    tgt: TgtService | None
    work: Path

    @property
    def client(self):
        return self.glance.client()

    def conf(self, name: str, extra: str) -> Path:
        path = self.work / f'{name}.conf'
        path.write_text(self.glance.nova_conf() + '\n[image_handlers]\n'
                        f'state_dir = {self.work / name / "state"}\n' + extra)
        return path

    def nginx_sent(self, url_path: str) -> int:
        """Body bytes nginx logged for ``url_path`` (combined log: the 10th field)."""
        total = 0
        try:
            lines = (self.nginx.workdir / 'access.log').read_text().splitlines()
        except FileNotFoundError:
            return 0
        for line in lines:
            parts = line.split('"')
            if len(parts) > 2 and parts[1].split(' ')[1:2] == [url_path]:
                fields = parts[2].split()
                if len(fields) >= 2 and fields[1].isdigit():
                    total += int(fields[1])
        return total


def run_cli(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout)


def session_members(sid: int) -> list[str]:
    """Live processes of session ``sid`` ('pid comm'), read from /proc."""
    found = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open(f'/proc/{name}/stat') as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat.rsplit(')', 1)[1].split()
        if int(rest[3]) == sid and rest[0] != 'Z':
            found.append(f'{name} {stat.split("(", 1)[1].rsplit(")", 1)[0]}')
    return found


def held_locks(directory: Path) -> list[str]:
    """Lock files under ``directory`` some process still holds (flock probe)."""
    held = []
    for path in directory.rglob('*.lock'):
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(str(path))
        finally:
            os.close(fd)
    return held


def wait_gone(members, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = members()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


# -- copy --------------------------------------------------------------------------

class CopyTrials:
    """``image-handlers fetch`` (stream_copy) of one image, killed and asked again."""

    def __init__(self, lab: Lab, data: bytes, seed: int,
                 glance_api_weight: int = 0) -> None:
        self.lab, self.data, self.seed = lab, data, seed
        self.sha512 = hashlib.sha512(data).hexdigest()
        self.data_end = last_data_end(data)
        self.conf = lab.conf('copy', (
            'handlers = stream_copy\nhttp_location_allowed_hosts = 127.0.0.1\n'
            f'glance_api_weight = {glance_api_weight}\n'
            f'checkpoint_interval = {CHECKPOINT}\ncopy_buffer_size = {BUFFER}\n'
            f'bandwidth_limit = {COPY_RATE}\nprogress_interval = 60\n'
            'copy_retry_backoff = 0.05\n'))
        self.targets = lab.work / 'copy' / 'targets'
        self.targets.mkdir(parents=True, exist_ok=True)
        src = lab.work / 'copy-image.raw'
        src.write_bytes(data)
        self.src = src
        self.duration = 0.0

    def _image(self, n: int) -> tuple[str, str]:
        """A Glance image whose location is its own name on nginx (so the access
        log tells each trial's bytes apart)."""
        name = f'kill-{self.seed}-{n}.raw'
        url = self.lab.nginx.publish(self.src, name)
        client = self.lab.client
        img = client.images.create(name=f'kill-trial-{n}', disk_format='raw',
                                   container_format='bare')
        client.images.add_location(img['id'], url, {}, validation_data={
            'os_hash_algo': 'sha512', 'os_hash_value': self.sha512,
            'checksum': hashlib.md5(self.data).hexdigest()})
        return img['id'], '/' + name

    def _argv(self, image_id: str, target: Path) -> list[str]:
        return [CLI, 'fetch', image_id, str(target), '--config-file', str(self.conf),
                '--json', '--no-progress']

    def calibrate(self) -> None:
        """One run without a kill: it must verify, and its length bounds the
        random kill times."""
        image_id, _ = self._image(0)
        target = self.targets / 'calibrate.raw'
        started = time.monotonic()
        proc = subprocess.run(self._argv(image_id, target), capture_output=True,
                              text=True, timeout=120)
        self.duration = time.monotonic() - started
        if proc.returncode or _sha512(target) != self.sha512:
            raise RuntimeError(f'the copy without a kill failed: {proc.stderr[-2000:]}')
        target.unlink()
        self.lab.client.images.delete(image_id)

    def run(self, n: int) -> Trial:
        rng = random.Random(f'copy:{self.seed}:{n}')
        moment = COPY_MOMENTS[n % len(COPY_MOMENTS)]
        at = {'time': lambda: rng.uniform(0, self.duration * 1.05),
              'offset': lambda: rng.randrange(1, len(self.data)),
              'final': lambda: rng.uniform(0, 0.02)}[moment]()
        trial = Trial('copy', n, moment, round(at, 4))
        started = time.monotonic()
        image_id, url_path = self._image(n + 1)
        target = self.targets / f'disk-{n}.raw'
        partial = target.with_name(f'.{target.name}.part')
        try:
            child = subprocess.Popen(self._argv(image_id, target),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
            written = self._kill(child, moment, at, target, partial)
            trial.phase = self._phase(child, target, partial)
            child.communicate()
            if os.path.exists(target) and _sha512(target) != self.sha512:
                trial.wrongly_published += os.path.getsize(target)
            left = wait_gone(lambda: session_members(child.pid))
            proc = subprocess.run(self._argv(image_id, target), capture_output=True,
                                  text=True, timeout=120)
            trial.note = ' | '.join(
                line.split(': ', 1)[-1][:300] for line in proc.stderr.splitlines()
                if 'resum' in line or 'starting over' in line)
            if proc.returncode and trial.phase in ('published', 'done') and \
                    'already exists' in proc.stderr:
                # Published before it died: the same request refuses to overwrite
                # it (as Nova finds its _base there and uses it); it must verify.
                trial.outcome = 'kept (published before the kill)'
            elif proc.returncode:
                trial.outcome, trial.error = 'failed', proc.stderr[-400:]
            else:
                out = json.loads(proc.stdout)
                details = out.get('details') or {}
                trial.resumed_from = int(details.get('resumed_from') or 0)
                if details.get('reused_existing'):
                    trial.outcome = 'reused'
                elif trial.resumed_from:
                    trial.outcome = 'resumed'
                elif 'ignored the range request' in trial.note:
                    trial.outcome = 'restarted (source ignores ranges)'
                else:
                    trial.outcome = 'restarted'
                if trial.phase not in ('published', 'done'):
                    trial.refetched = max(0, min(written, len(self.data))
                                          - trial.resumed_from)
            got = _sha512(target)
            if got is not None and got != self.sha512:
                trial.wrongly_published += os.path.getsize(target)
                trial.outcome = 'wrong bytes'
            elif got is None and trial.outcome != 'failed':
                trial.outcome = 'no target after the retry'
            trial.served_extra = max(0, self.lab.nginx_sent(url_path) - len(self.data))
            trial.leftovers = (
                [f'process {p}' for p in left]
                + [f'file {p.name}' for p in self.targets.iterdir() if p != target]
                + [f'held lock {p}' for p in held_locks(self.lab.work / 'copy')])
        finally:
            trial.seconds = round(time.monotonic() - started, 2)
            for p in self.targets.iterdir():
                p.unlink()
            self.lab.client.images.delete(image_id)
            (self.lab.nginx.docroot / url_path[1:]).unlink()
        return trial

    def _kill(self, child: subprocess.Popen, moment: str, at: float, target: Path,
              partial: Path) -> int:
        """SIGKILL the child at the drawn moment; return the bytes its partial held
        then (its size: the sparse writer skips holes, so at most one hole short)."""
        started = time.monotonic()
        written = 0

        def size() -> int:
            try:
                return os.stat(partial).st_size
            except FileNotFoundError:
                return 0
        while child.poll() is None:
            written = max(written, size())
            if moment == 'time' and time.monotonic() - started >= at:
                break
            if moment == 'offset' and written >= at:
                break
            if moment == 'final' and (written >= self.data_end or target.exists()):
                time.sleep(at)
                break
            time.sleep(0.001)
        child.send_signal(signal.SIGKILL)
        child.wait()
        return max(written, size())

    @staticmethod
    def _phase(child: subprocess.Popen, target: Path, partial: Path) -> str:
        """Where the run was when it died, from what it left on disk."""
        if child.returncode == 0:
            return 'done'           # it finished before the kill
        checkpoint = Path(str(partial) + '.json')
        if target.exists():
            return 'published'      # linked (maybe not yet tidied up)
        if checkpoint.exists():
            return 'between checkpoints'
        if partial.exists():
            return 'before first checkpoint'
        return 'starting'


def _sha512(path: Path) -> str | None:
    try:
        with open(path, 'rb') as f:
            return hashlib.file_digest(f, 'sha512').hexdigest()
    except FileNotFoundError:
        return None


# -- fill -------------------------------------------------------------------------

class FillTrials:
    """iscsi_cor disks whose ``lun_fill`` worker is SIGKILLed, then resumed."""

    def __init__(self, lab: Lab, data: bytes, seed: int) -> None:
        self.lab, self.data, self.seed = lab, data, seed
        self.sha512 = hashlib.sha512(data).hexdigest()
        self.backing = lab.work / 'lun-image.raw'
        self.backing.write_bytes(data)
        self.duration = 0.0

    def _setup(self, n: int) -> tuple[str, str, Path, Path]:
        """An image in Glance (hash, size) whose location row names a LUN of the
        same bytes (operators publish LUNs so; Glance's API refuses the scheme)."""
        name = f'kt{self.seed}x{n}'
        export = self.lab.tgt.export(name, self.backing)
        client = self.lab.client
        img = client.images.create(name=f'kill-fill-{n}', disk_format='raw',
                                   container_format='bare')
        client.images.upload(img['id'], io.BytesIO(self.data), image_size=len(self.data))
        db = sqlite3.connect(self.lab.glance.workdir / 'glance.sqlite')
        with db:
            db.execute('update image_locations set value = ?, meta_data = ? where '
                       'image_id = ? and deleted = 0', (export.url, '{}', img['id']))
        db.close()
        work = self.lab.work / 'fill' / name
        work.mkdir(parents=True)
        conf = self.lab.conf(f'fill/{name}', (
            'handlers = iscsi_cor, stream_copy\n'
            f'iscsi_allowed_portals = {self.lab.tgt.portal}\n'
            f'bandwidth_limit = {FILL_RATE}\niscsi_timeout = 5\nread_timeout = 10\n'))
        return name, img['id'], work, conf

    def _fetch(self, image_id: str, disk: Path, conf: Path) -> str:
        proc = run_cli(['fetch', image_id, str(disk), '--disk-format', 'qcow2',
                        '--config-file', str(conf), '--json'])
        if proc.returncode:
            raise RuntimeError(f'iscsi_cor fetch failed: {proc.stderr[-2000:]}')
        out = json.loads(proc.stdout)
        if out['handler'] != 'iscsi_cor' or not out.get('job'):
            raise RuntimeError(f'not an iscsi_cor disk with a fill job: {out}')
        return out['job']

    def calibrate(self) -> None:
        name, image_id, work, conf = self._setup(0)
        try:
            job = self._fetch(image_id, work / 'disk.qcow2', conf)
            started = time.time()
            proc = run_cli(['jobs', 'wait', job, '--config-file', str(conf),
                            '--timeout', '120', '--no-progress'])
            if proc.returncode:
                raise RuntimeError(f'the fill without a kill failed: {proc.stderr}')
            # The job's own end (its record's last update), not when "jobs wait"
            # noticed it: that added the command's start-up and polling, and about
            # half the kills landed after the job had ended.
            record = json.loads((work / 'state' / 'jobs' / f'{job}.json').read_text())
            self.duration = max(0.1, float(record['updated']) - started)
        finally:
            self._teardown(name, image_id, work)

    def _teardown(self, name: str, image_id: str, work: Path) -> None:
        self.lab.tgt.unexport(name)
        self.lab.client.images.delete(image_id)
        shutil.rmtree(work, ignore_errors=True)

    def run(self, n: int) -> Trial:
        rng = random.Random(f'fill:{self.seed}:{n}')
        at = rng.uniform(0, self.duration * 1.05)
        trial = Trial('fill', n, 'time', round(at, 4))
        started = time.monotonic()
        name, image_id, work, conf = self._setup(n + 1)
        disk = work / 'disk.qcow2'
        state = work / 'state'
        tgtd = self.lab.tgt.pid()
        try:
            served0 = _wchar(tgtd)
            job = self._fetch(image_id, disk, conf)
            worker = self._kill_worker(state, job, time.monotonic() + at)
            record = json.loads((state / 'jobs' / f'{job}.json').read_text())
            trial.phase = self._phase(record)
            left = wait_gone(lambda: session_members(worker), 10) if worker else []
            resume = run_cli(['jobs', 'resume', '--config-file', str(conf)])
            done = run_cli(['jobs', 'wait', job, '--config-file', str(conf),
                            '--timeout', '120', '--no-progress'])
            record = json.loads((state / 'jobs' / f'{job}.json').read_text())
            if resume.returncode or done.returncode or record['state'] != 'done':
                trial.outcome = f'job {record["state"]}'
                trial.error = (record.get('error') or resume.stderr + done.stderr)[-400:]
            else:
                trial.outcome = 'resumed' if worker else 'done before kill'
            got = _qcow2_bytes(disk, work)
            if got is None or hashlib.sha512(got[:len(self.data)]).hexdigest() != \
                    self.sha512:
                trial.wrongly_published = len(self.data)
                trial.outcome = 'wrong bytes'
            trial.refetched = max(0, _wchar(tgtd) - served0 - len(self.data))
            trial.served_extra = trial.refetched
            info = _qemu_info(disk)
            trial.leftovers = (
                [f'process {p}' for p in left]
                + ([f'backing file {info["backing-filename"]}']
                   if info.get('backing-filename') else [])
                + [f'file {p.name}' for p in (state / 'jobs').iterdir()
                   if p.name.endswith(('.handover', '.released', '.tmp'))]
                + [f'held lock {p}' for p in held_locks(state)]
                + [f'iSCSI session {s}' for s in self.lab.tgt.sessions(name)])
            if worker:
                trial.leftovers += [f'process {p}' for p in session_members(worker)
                                    if f'process {p}' not in trial.leftovers]
        finally:
            trial.seconds = round(time.monotonic() - started, 2)
            for line in trial.leftovers:   # ours: never leave them running
                if line.startswith('process '):
                    _kill_quietly(int(line.split()[1]))
            self._teardown(name, image_id, work)
        return trial

    def _phase(self, record: dict) -> str:
        """Where the worker was when it died, from the job record it left (its
        progress is saved every half second, so 'filling' may be 'finishing')."""
        if record['state'] == 'queued':
            return 'worker starting'
        if record['state'] != 'running':
            return f'job {record["state"]}'
        if record['done_bytes'] >= len(self.data):
            return 'finishing (LUN read, disk being made standalone)'
        return f'filling at byte {record["done_bytes"]}'

    @staticmethod
    def _kill_worker(state: Path, job: str, when: float) -> int | None:
        """SIGKILL the job's worker (only it, not its session) at ``when``;
        its pid, or None when the job ended first."""
        lock = state / 'jobs' / f'{job}.json'
        worker = None
        while True:
            if worker is None:
                worker = _find_worker(job)
            record = json.loads(lock.read_text())
            if record['state'] in ('done', 'failed', 'cancelled') and (
                    worker is None or not _alive(worker)):
                return None
            if worker is not None and time.monotonic() >= when:
                os.kill(worker, signal.SIGKILL)
                while _alive(worker):
                    time.sleep(0.005)
                return worker
            time.sleep(0.002)


def _find_worker(job: str) -> int | None:
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                with open(f'/proc/{name}/cmdline', 'rb') as f:
                    argv = f.read().split(b'\0')
            except OSError:
                continue
            if b'image_handlers.jobs.worker' in argv and job.encode() in argv:
                return int(name)
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wchar(pid: int | None) -> int:
    """Bytes tgtd wrote (sockets included): what it served to initiators."""
    if pid is None:
        return 0
    with open(f'/proc/{pid}/io') as f:
        for line in f:
            if line.startswith('wchar:'):
                return int(line.split()[1])
    return 0


def _qemu_info(disk: Path) -> dict:
    proc = subprocess.run(['qemu-img', 'info', '-U', '--output=json', str(disk)],
                          capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def _qcow2_bytes(disk: Path, work: Path) -> bytes | None:
    out = work / 'read-back.raw'
    proc = subprocess.run(['qemu-img', 'convert', '-U', '-O', 'raw', str(disk),
                           str(out)], capture_output=True)
    if proc.returncode:
        return None
    data = out.read_bytes()
    out.unlink()
    return data


# -- report ------------------------------------------------------------------------

def summarise(trials: list[Trial]) -> dict:
    by_kind = collections.defaultdict(list)
    for t in trials:
        by_kind[t.kind].append(t)
    report = {}
    for kind, rows in by_kind.items():
        refetched = [t.refetched for t in rows]
        ranged = [t.refetched for t in rows if t.outcome != NO_RANGES] or [0]
        report[kind] = {
            'trials': len(rows),
            'phases': dict(collections.Counter(t.phase.split(' at byte')[0]
                                               for t in rows)),
            'outcomes': dict(collections.Counter(t.outcome for t in rows)),
            'wrongly_published_bytes': sum(t.wrongly_published for t in rows),
            'refetched_max': max(refetched), 'refetched_mean': round(
                statistics.mean(refetched)),
            'refetched_max_where_ranges_work': max(ranged),
            'served_extra_max': max(t.served_extra for t in rows),
            'leftovers': sum(len(t.leftovers) for t in rows),
            'seconds': round(sum(t.seconds for t in rows), 1)}
    return report


def goals_missed(report: dict) -> list[str]:
    missed = []
    for kind, r in report.items():
        if r['wrongly_published_bytes']:
            missed.append(f'{kind}: {r["wrongly_published_bytes"]} bytes published '
                          f'wrongly')
        bad = {k: v for k, v in r['outcomes'].items()
               if k not in GOOD}
        if bad:
            missed.append(f'{kind}: outcomes {bad}')
        if r['leftovers']:
            missed.append(f'{kind}: {r["leftovers"]} leftovers after the retry')
        # A copy keeps what its last durable checkpoint covers: at most two
        # intervals are lost (the writer waits for a sync that falls behind). A
        # fill loses only the reads in flight (4 of 4 MiB).
        limit = 2 * CHECKPOINT if kind == 'copy' else 4 * 4 * MiB
        if r['refetched_max_where_ranges_work'] > limit:
            missed.append(f'{kind}: fetched {r["refetched_max_where_ranges_work"]} '
                          f'bytes again from a source that resumes (more than '
                          f'{limit})')
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--trials', type=int, default=50)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--kinds', default=','.join(KINDS))
    parser.add_argument('--size-mib', type=int, default=16)
    parser.add_argument('--json', help='write the report (and every trial) here')
    parser.add_argument('--glance-api-weight', type=int, default=0,
                        help='[image_handlers] glance_api_weight of the copies: -1 '
                             'prefers the direct http location to Glance\'s data '
                             'API (which ignores Range for its http store)')
    parser.add_argument('--lab-name', default='kill',
                        help='names of its lab services (nginx-NAME, glance-NAME, '
                             'tgt-NAME): runs at once under one IH_LAB_RUN_DIR need '
                             'different names')
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(',') if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f'unknown kinds {unknown} (known: {", ".join(KINDS)})')
    work = Path(tempfile.mkdtemp(prefix='kill-trials-'))
    nginx = NginxService(name=f'nginx-{args.lab_name}')
    glance = GlanceService(name=f'glance-{args.lab_name}')
    tgt = TgtService(f'tgt-{args.lab_name}') if 'fill' in kinds else None
    trials: list[Trial] = []
    started = time.monotonic()
    try:
        for svc in (nginx, glance, tgt):
            if svc is not None:
                svc.start()
        lab = Lab(nginx, glance, tgt, work)
        data = image(args.size_mib * MiB, args.seed)
        for kind in kinds:
            runner = (CopyTrials(lab, data, args.seed, args.glance_api_weight)
                      if kind == 'copy' else FillTrials(lab, data, args.seed))
            runner.calibrate()
            for n in range(args.trials):
                try:
                    trials.append(runner.run(n))
                except Exception as exc:  # noqa: BLE001 - a goal missed, reported
                    trials.append(Trial(kind, n, 'error', 0, outcome='trial error',
                                        error=f'{type(exc).__name__}: {exc}'[:400]))
                if args.json:           # as it goes: a long run keeps what it did
                    _write(args.json, trials)
                if trials[-1].outcome not in GOOD:
                    print(f'trial {kind} {n}: {trials[-1]}', file=sys.stderr)
    finally:
        for svc in (tgt, glance, nginx):
            if svc is not None:
                svc.stop()
        shutil.rmtree(work, ignore_errors=True)
    report = summarise(trials)
    print(f'kill trials: {args.trials} per kind, seed {args.seed}, image '
          f'{args.size_mib} MiB, checkpoint interval {CHECKPOINT} bytes, '
          f'glance_api_weight {args.glance_api_weight}, '
          f'{time.monotonic() - started:.0f} s')
    for kind, r in report.items():
        print(f'{kind}: {r["trials"]} trials; killed at: '
              + ', '.join(f'{k} {v}' for k, v in sorted(r['phases'].items())))
        print('  after the retry: ' + ', '.join(
            f'{k} {v}' for k, v in sorted(r['outcomes'].items()))
            + f'; wrong bytes published {r["wrongly_published_bytes"]}; fetched again '
              f'max {r["refetched_max"]} mean {r["refetched_mean"]} (max '
              f'{r["refetched_max_where_ranges_work"]} where the source resumes); '
              f'served beyond '
              f'the image max {r["served_extra_max"]}; leftovers {r["leftovers"]}')
    missed = goals_missed(report)
    print('goals: ' + ('MET (nothing published wrongly, every retry verified, no '
                       'leftovers, re-fetch within bounds)' if not missed
                       else 'MISSED: ' + '; '.join(missed)))
    if args.json:
        _write(args.json, trials)
    return 1 if missed else 0


def _write(path: str, trials: list[Trial]) -> None:
    with open(path, 'w') as f:
        json.dump({'report': summarise(trials) if trials else {},
                   'trials': [dataclasses.asdict(t) for t in trials]}, f, indent=1)


if __name__ == '__main__':
    sys.exit(main())
