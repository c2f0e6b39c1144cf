"""Job kind ``lun_fill``: copy what a copy-on-read overlay still reads from its LUN
into it, verify the LUN against the image hash, then leave the LUN behind.

Two ways, and the hand-over between them:

- offline (no guest has the disk yet): qemu-nbd serves the overlay through qemu's
  copy-on-read filter and the job reads it in order, so every block read from the
  LUN is written into the overlay *and* hashed: one pass over the network fills and
  verifies. Rerun after a kill, blocks already local are read locally.
- online (a guest has it open; two writers on one qcow2 corrupt it): the guest's
  own qemu pulls the backing chain in (libvirt block pull, bandwidth-limited), and
  the rest of the LUN is hashed straight from the target.
- hand-over: before a guest opens the disk, its starter calls ``release_for_guest``
  (the Nova hook does), which asks the job to stop writing at the next chunk and
  waits until it has; the job then waits for the guest and continues online.

``bandwidth_limit`` is the host's: the offline fill's reads and the online path's
verification reads take the host bucket the copy engine takes (one GCRA state in
``state_dir/locks``), so copies and fills together stay within it. The online
block pull is not counted there: it runs inside the guest's qemu, which only takes
libvirt's per-job bandwidth (the same number, passed on), so while a guest pulls,
the host may move up to that much more.

A LUN whose bytes are not the image's is an ERROR in the log and the job, and is
refused by iscsi_cor from then on (iscsi.verdicts).
"""
from __future__ import annotations

import os
import time

from oslo_log import log as logging

from image_handlers import exceptions
from image_handlers.copy.checksum import Checksum
from image_handlers.copy.conf import copy_options
from image_handlers.copy.ratelimit import HostBucket, host_bucket
from image_handlers.iscsi import guest, reader
from image_handlers.iscsi.lun import LunSpec
from image_handlers.iscsi.verdicts import LunVerdicts
from image_handlers.jobs.kinds import JobContext, JobKind
from image_handlers.jobs.model import Job
from image_handlers.jobs.store import JobStore
from image_handlers.qemu import img

LOG = logging.getLogger(__name__)


def _flag(state_dir: str, job_id: str, name: str) -> str:
    return os.path.join(JobStore(state_dir).directory, f'{job_id}.{name}')


def release_for_guest(state_dir: str, job_id: str, timeout: float) -> bool:
    """Ask the fill to stop writing the disk so a guest may open it; True once it
    has (or it already ended), False after ``timeout`` seconds."""
    jobs = JobStore(state_dir)
    with open(_flag(state_dir, job_id, 'handover'), 'w'):
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (os.path.exists(_flag(state_dir, job_id, 'released'))
                or jobs.get(job_id).finished or not jobs.is_running(job_id)):
            return True
        time.sleep(0.05)
    return False


class LunFill(JobKind):
    name = 'lun_fill'

    def run(self, job: Job, ctx: JobContext) -> dict:
        p = job.params
        group = ctx.conf.image_handlers
        state_dir = group.state_dir
        spec = LunSpec(**p['lun'])
        disk, size = p['disk'], int(p['size'])
        checksum = Checksum.parse(p['checksum']) if p.get('checksum') else None
        verdicts = LunVerdicts(state_dir)
        key = p.get('verdict_key') or (str(checksum) if checksum else None)
        verify = checksum is not None and not verdicts.verified(
            p['image_id'], key, p['identity'])
        hasher = checksum.new() if verify else None
        sink = hasher.update if hasher else (lambda data: None)
        bandwidth = int(p.get('bandwidth_limit', group.bandwidth_limit) or 0)

        def handover() -> bool:
            return os.path.exists(_flag(state_dir, job.id, 'handover'))

        def stop() -> bool:
            return ctx.cancelled() or handover()

        # Two views on the one host bucket: offline waits end at a hand-over too,
        # online ones (the hand-over flag stays) only on cancel.
        offline_limiter = _host_limiter(bandwidth, group, stop)
        online_limiter = _host_limiter(bandwidth, group, ctx.cancelled)

        offset, mode = 0, 'offline'
        if not handover():
            offset = self._offline(spec, disk, size, sink, offline_limiter, stop, ctx,
                                   p)
        if ctx.cancelled():
            raise exceptions.CopyCancelled(f'fill of {disk} cancelled at byte {offset}')
        if offset < size:
            mode = 'online'
            with open(_flag(state_dir, job.id, 'released'), 'w'):
                pass
            LOG.info('job %s: %s handed over to its guest at byte %d', job.id, disk,
                     offset)
            self._online(spec, disk, size, offset, sink, online_limiter, ctx, p,
                         bandwidth)
        elif img.fully_allocated(disk):     # every block was read through COR:
            img.drop_backing(disk)          # the LUN need not be opened again
        else:
            img.make_standalone(disk, 'raw', objects=tuple(spec.objects()))
        _detach(p.get('attachment') or {})
        result = {'disk': disk, 'mode': mode, 'filled_offline': offset,
                  'lun': spec.url, 'verified': None}
        if hasher is not None:
            actual = hasher.hexdigest()
            if actual != checksum.hexdigest:
                why = (f'LUN {spec.url} does not hold image {p["image_id"]}: its '
                       f'{checksum.algo} is {actual}, the image\'s {checksum.hexdigest}; '
                       f'the disk {disk} holds these wrong bytes and this LUN is '
                       f'refused from now on')
                verdicts.record(p['image_id'], str(checksum), p['identity'], why)
                LOG.error('job %s: %s', job.id, why)
                raise exceptions.ChecksumMismatch(why)
            verdicts.record(p['image_id'], str(checksum), p['identity'])
            result['verified'] = f'{checksum} (LUN read and hashed by this job)'
        elif checksum is not None:
            result['verified'] = f'{checksum} (LUN verified before)'
        ctx.report(size, size)
        return result

    @staticmethod
    def _offline(spec, disk, size, sink, limiter, stop, ctx, p) -> int:
        """Read the overlay through copy-on-read until done or told to stop. A
        target that goes away is retried, bounded, from the byte reached: the hash
        has taken exactly the bytes before it."""
        opts = ('driver=copy-on-read,file.driver=qcow2,file.file.driver=file,'
                f'file.file.filename={disk}')
        retries = int(p.get('retries', 5))
        reached, failures = 0, 0

        def progress(done: int) -> None:
            nonlocal reached
            reached = done
            ctx.report(done, size)

        while True:
            start = reached
            if img.in_use(disk):
                return reached                  # a guest has it: fill online
            try:
                with reader.served(spec.objects(), opts, read_only=False,
                                   description=f'overlay {disk}') as h:
                    return reader.read_through(h, reached, size, sink, limiter, stop,
                                               progress, f'fill of {disk}',
                                               float(p.get('read_timeout', 60)))
            except exceptions.SourceError as exc:
                failures = 1 if reached > start else failures + 1
                if failures > retries:
                    raise exceptions.RetriesExhausted(
                        f'fill of {disk} from {spec.url}: giving up after {retries} '
                        f'retries in a row at byte {reached}: {exc}; what was filled '
                        f'stays, and "image-handlers jobs resume {ctx.job_id}" '
                        f'continues once the target is back') from None
                LOG.warning('fill of %s: %s; retry %d of %d from byte %d', disk, exc,
                            failures, retries, reached)
                time.sleep(min(30.0, 0.5 * 2 ** (failures - 1)))

    @staticmethod
    def _online(spec, disk, size, offset, sink, limiter, ctx, p, bandwidth) -> None:
        """Hash the rest of the LUN (reads counted in the host bucket), then let the
        guest's qemu pull the backing chain in at libvirt's ``bandwidth``: those
        bytes are not counted in the host bucket (qemu cannot take it)."""
        uri = p.get('libvirt_uri') or 'qemu:///system'
        deadline = time.monotonic() + float(p.get('handover_timeout', 600))
        found, last = None, None
        while found is None:
            try:
                found = guest.find(uri, disk)
            except exceptions.ImageHandlerError as exc:
                last = exc          # libvirt not there yet: keep asking until the end
            if found is None:
                if time.monotonic() > deadline:
                    raise exceptions.ImageHandlerError(
                        f'{disk} was released for a guest, but no running domain has '
                        f'it open after {p.get("handover_timeout", 600)} s'
                        + (f' (libvirt: {last})' if last else '')
                        + f'; "image-handlers jobs resume {ctx.job_id}" continues once '
                          f'it runs')
                time.sleep(0.2)
        domain, dev = found
        if offset < size:   # the part not hashed yet, straight from the LUN
            with reader.served(spec.objects(), spec.image_opts(), read_only=True,
                               description=spec.url) as h:
                reader.read_through(h, offset, size, sink, limiter, ctx.cancelled,
                                    lambda done: None, f'verification of {spec.url}',
                                    float(p.get('read_timeout', 60)))
        guest.block_pull(uri, domain, dev, bandwidth,
                         lambda cur, end: ctx.report(cur, end or size), ctx.cancelled)
        after = img.info(disk)
        if after.get('backing-filename'):
            raise exceptions.ImageHandlerError(
                f'{disk} still has backing file {after["backing-filename"]} after the '
                f'block pull in {domain}')


def _host_limiter(bandwidth: int, group, wake) -> HostBucket | None:
    """The host's bucket (shared with stream_copy through the engine's lock
    directory), whose waits end early when ``wake()`` says stop: a shared limit can
    make one read wait seconds for the others, and a hand-over must not."""
    if not bandwidth:
        return None

    def sleep(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not wake():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    return host_bucket(bandwidth, copy_options(group).lock_dir, sleep=sleep)


def _detach(record: dict) -> None:
    """The disk no longer reads the LUN: undo a kernel attachment (qemu's initiator
    logged out when the disk was closed)."""
    if record.get('connector') != 'kernel':
        return
    from image_handlers.iscsi import connectors
    connectors.OsBrickConnector().detach(connectors.Attachment(
        'kernel', record['backing'], '', device=record.get('device'),
        properties=record.get('properties')))
