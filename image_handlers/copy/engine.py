"""The full-copy engine: one run of one copy, from lock to published file.

Order of a run: refuse a bad target; take the per-image lock (and reuse a
target another copy published meanwhile); lock the partial file; resume from
its checkpoint when it still describes the same source and image; stream with
retries; verify size, hash and signature; sync; publish by hard link.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

from oslo_log import log as logging

from image_handlers import exceptions
from image_handlers.copy import checkpoint, fsutil, locking
from image_handlers.copy.cancel import CancelToken
from image_handlers.copy.checkpoint import Checkpoint, CopyPaths
from image_handlers.copy.checkpointer import Checkpointer
from image_handlers.copy.checksum import Checksum
from image_handlers.copy.options import CopyOptions, CopyResult
from image_handlers.copy.buffers import Buffer, BufferPool
from image_handlers.copy.direct_io import DataFile
from image_handlers.copy.pipeline import pump
from image_handlers.copy.progress import Progress
from image_handlers.copy.ratelimit import host_bucket
from image_handlers.copy.source import (Source, Stream, TransientSourceError,
                                        identity_conflict)
from image_handlers.copy.sparse import SparseWriter
from image_handlers.trust import signature as signatures

LOG = logging.getLogger(__name__)
BUFFERS = 5     # one per stage (read, hash, write) and two to absorb jitter


@dataclasses.dataclass(frozen=True)
class CopyJob:
    source: Source
    target: str
    checksum: Checksum | None
    expected_size: int | None
    options: CopyOptions
    lock_name: str | None
    description: str
    # A fresh signature verifier per pass (trust.signature.BoundSignature.verifier):
    # fed the same bytes as the hash, in a pipeline stage of its own.
    signature: Callable[[], signatures.Verifier] | None = None
    image_id: str | None = None     # recorded in the checkpoint, for clean-up


def run(job: CopyJob, cancel: CancelToken, progress: Progress) -> CopyResult:
    paths = CopyPaths.for_target(job.target)
    fsutil.check_target(paths)
    if not job.lock_name:
        return _Transfer(job, paths, cancel, progress).run()
    lock = locking.lock_path(job.options.lock_dir or paths.directory, job.lock_name)
    checksum = str(job.checksum) if job.checksum else None
    with locking.image_lock(lock, cancel, job.description):
        if os.path.lexists(paths.target):
            return _reuse(job, paths, cancel, lock)
        local = locking.published_copy(lock, checksum, paths.target, job.description)
        if local is not None:
            result = _from_local(job, paths, cancel, progress, local)
            if result is not None:
                return result
        result = _Transfer(job, paths, cancel, progress).run()
        locking.record_published(lock, paths.target, checksum)
        return result


def _from_local(job: CopyJob, paths: CopyPaths, cancel: CancelToken,
                progress: Progress, local) -> CopyResult | None:
    """Make this target from the file another transfer of the image published on
    this host (16 requests, 16 disks: the source serves the image once). Verified
    as any copy; None (transfer from the source instead) when that file fails."""
    LOG.info('%s: another transfer of this image published %s while this one '
             'waited; copying it locally instead of from the source', job.description,
             local.path)
    try:
        result = _Transfer(dataclasses.replace(job, source=local,
                                               description=local.description),
                           paths, cancel, progress).run()
    except (exceptions.SourceError, exceptions.ChecksumMismatch,
            exceptions.SizeMismatch) as exc:
        LOG.warning('%s: the local copy from %s failed (%s); transferring from the '
                    'source', job.description, local.path, exc)
        return None
    return dataclasses.replace(result, bytes_transferred=0, copied_from=local.path)


def _reuse(job: CopyJob, paths: CopyPaths, cancel: CancelToken,
           lock: str) -> CopyResult:
    """The target was published by another copy while we waited for the lock:
    check it instead of copying again; never touch it."""
    started = time.monotonic()
    why = (f'target {paths.target} was published by another transfer while this '
           f'one waited for lock {lock}')
    fd = os.open(paths.target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if job.expected_size is not None and size != job.expected_size:
            raise exceptions.SizeMismatch(
                f'{why}, but it has {size} bytes where {job.description} has '
                f'{job.expected_size}; it was left untouched: check and remove it')
        hasher = job.checksum.new() if job.checksum is not None else None
        verifier = job.signature() if job.signature else None
        read_fd(fd, size, [d.update for d in (hasher, verifier) if d is not None],
                BufferPool.create(1, job.options.buffer_size), cancel, job.description)
        if hasher is not None and hasher.hexdigest() != job.checksum.hexdigest:
            raise exceptions.ChecksumMismatch(
                f'{why}, but its {job.checksum.algo} is {hasher.hexdigest()} where '
                f'{job.description} has {job.checksum.hexdigest}; it was left '
                f'untouched: check and remove it')
        if verifier is not None:
            signatures.check(verifier, f'{why}, but it', 'it was left untouched: '
                             'check and remove it')
    finally:
        os.close(fd)
    if job.checksum is not None or job.signature is not None:
        checked = ' and '.join(([f'{job.checksum.algo}'] if job.checksum else [])
                               + (['signature'] if job.signature else [])) + ' verified'
    elif job.expected_size is not None:
        checked = 'size checked, no checksum given'
    else:
        checked = 'not verified: no checksum or size given'
    LOG.info('%s: %s; reusing it (%s)', job.description, why, checked)
    return CopyResult(target=paths.target, size=size, bytes_transferred=0,
                      resumed_from=0, restarts_from_zero=0, retries=0,
                      seconds=time.monotonic() - started, checksum=job.checksum,
                      sparse_bytes=0, reused_existing=True,
                      signature_verified=job.signature is not None)


def _where(identity: dict) -> str:
    """A checkpoint's source, for logs (sources keep no credentials in it)."""
    return str(identity.get('url') or 'an unnamed source')


def read_fd(fd: int, length: int, updates: list[Callable[[memoryview], None]],
            pool: BufferPool, cancel: CancelToken, description: str) -> None:
    """Feed the first ``length`` bytes of ``fd`` to each of ``updates`` (pread:
    the offset is untouched)."""
    view = pool.buffers[0].view
    pos = 0
    while pos < length:
        cancel.check(description)
        n = os.preadv(fd, [view[:min(len(view), length - pos)]], pos)
        if not n:
            raise OSError(f'file ended at byte {pos} of {length}')
        for update in updates:
            update(view[:n])
        pos += n


class _Transfer:
    """State of one run: offset, hash and counters move together."""

    def __init__(self, job: CopyJob, paths: CopyPaths, cancel: CancelToken,
                 progress: Progress) -> None:
        self.job = job
        self.paths = paths
        self.cancel = cancel
        self.progress = progress
        self.opts: CopyOptions = job.options
        self.offset = 0
        self.total: int | None = job.expected_size
        self.hasher = job.checksum.new() if job.checksum else None
        self.verifier = job.signature() if job.signature else None
        self.identity: dict | None = None       # of the data in the partial
        self.received = 0
        self.retries = 0
        self.restarts = 0
        self.resumed_from: int | None = None
        # The writer waits when the last checkpoint is still being synced as the
        # next is due: a kill loses at most two intervals, even on a slow disk.
        self.step = self.opts.checkpoint_interval
        self.next_checkpoint = self.step
        self.pool = BufferPool.create(BUFFERS, self.opts.buffer_size)
        # One limit for the host: every copy with this lock directory (nova.conf's
        # state_dir) shares it; without one, every copy of this process.
        self.limiter = (host_bucket(self.opts.bandwidth_limit, self.opts.lock_dir,
                                    sleep=cancel.sleep)
                        if self.opts.bandwidth_limit else None)
        self.fd = -1
        self.data: DataFile | None = None
        self.direct_bytes = 0
        self.writer: SparseWriter | None = None
        self.checkpointer: Checkpointer | None = None

    # -- the run, with what to keep on each failure -----------------------

    def run(self) -> CopyResult:
        started = time.monotonic()
        self.fd, created = locking.open_partial(self.paths)
        try:
            self.data = DataFile(self.fd, self.opts.direct_io, self.job.description)
            self.writer = SparseWriter(self.data.pwrite, self.opts.sparse)
            self._resume_or_start(created)
            self.checkpointer = Checkpointer(self.fd, self.paths, self._meta(),
                                             getattr(self.job.source, 'position', None))
            self._transfer()
            self._verify()
            os.ftruncate(self.fd, self.offset)     # trailing holes count too
            os.fsync(self.fd)
            self._close_checkpointer()
            fsutil.publish(self.paths)
            checkpoint.remove(self.paths, partial=False)
        except (exceptions.CopyCancelled, exceptions.SourceError) as exc:
            self._keep_for_resume(exc)
            raise
        except (exceptions.ChecksumMismatch, exceptions.SizeMismatch,
                exceptions.TargetExists):
            self._discard()
            raise
        except exceptions.DiskFull:
            # Refused before this run wrote a byte: a resumable partial is kept
            # as it was (space freed, the next copy resumes); an empty one goes.
            if self.offset == 0:
                self._discard()
            raise
        except OSError as exc:
            if not fsutil.is_disk_full(exc):
                raise
            self._discard()
            raise fsutil.disk_full(self.paths, self.job.description, self.total,
                                   self.offset) from exc
        finally:
            self._close_checkpointer(quiet=True)
            self._close_fd()
        return self._result(time.monotonic() - started)

    def _keep_for_resume(self, exc: BaseException) -> None:
        """Record a final checkpoint so the next run loses nothing; a partial
        with no data is just removed."""
        self._close_checkpointer(quiet=True)
        if self.offset <= 0:
            checkpoint.remove(self.paths)       # nothing worth resuming
            return
        if self.checkpointer is None:
            return                              # stopped while resuming: the loaded
                                                # checkpoint still holds
        try:
            self.checkpointer.save_now(self.offset)
        except OSError as save_exc:
            LOG.warning('%s: could not save the final checkpoint of %s: %s',
                        self.job.description, self.paths.partial, save_exc)
            if fsutil.is_disk_full(save_exc):
                self._discard()
                return
        LOG.info('%s: stopped at byte %d (%s); %s and its checkpoint are kept so '
                 'the next copy resumes', self.job.description, self.offset,
                 type(exc).__name__, self.paths.partial)

    def _discard(self) -> None:
        """Delete partial and checkpoint; closing first frees the space now."""
        self._close_checkpointer(quiet=True)
        self._close_fd()
        checkpoint.remove(self.paths)

    def _close_fd(self) -> None:
        if self.data is not None:
            self.data.close()
            self.direct_bytes += self.data.direct_bytes
            self.data = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _close_checkpointer(self, quiet: bool = False) -> None:
        if self.checkpointer is None:
            return
        try:
            self.checkpointer.close()
        except Exception:
            if not quiet:
                raise

    # -- resume --------------------------------------------------------------

    def _resume_or_start(self, created: bool) -> None:
        job = self.job
        old = checkpoint.load(self.paths)
        reason = None
        if old is not None:
            reason = old.matches(job.expected_size,
                                 str(job.checksum) if job.checksum else None,
                                 job.source.identity().get('url'))
            if reason is None and created:
                reason = 'the partial file is gone'
            if (reason is None and job.expected_size is not None
                    and old.offset > job.expected_size):
                reason = 'its offset is past the expected size'
        if old is None or reason:
            if reason:
                LOG.info('%s: not resuming %s: %s; starting at byte 0',
                         job.description, self.paths.partial, reason)
            checkpoint.remove(self.paths, partial=False)
            os.ftruncate(self.fd, 0)
            return
        os.ftruncate(self.fd, old.offset)
        if old.same_source(job.source.identity().get('url')):
            self.identity = old.source      # its validators guard the resume
            expect = getattr(job.source, 'expect', None)
            if expect is not None:
                expect(old.source)
            resume_at = getattr(job.source, 'resume_at', None)
            if resume_at is not None and old.position:
                resume_at(old.position)     # e.g. a compressed file's frame boundary
        else:
            # Another location of the same image: its validators mean nothing
            # here; the final hash (matches() insists on one) covers every byte.
            LOG.info('%s: resuming the %d bytes copied from %s, now from %s: another '
                     'location of the same image; the %s over every byte decides',
                     job.description, old.offset, _where(old.source),
                     job.source.description, job.checksum.algo)
            self.identity = None
        self.offset = old.offset
        if self._digests() and old.offset:
            LOG.info('%s: resuming at byte %d of %s; hashing the kept bytes first',
                     job.description, old.offset, self.paths.partial)
            read_fd(self.fd, old.offset, self._digests(), self.pool, self.cancel,
                    job.description)
        self.next_checkpoint = self.offset + self.step

    def _meta(self) -> Checkpoint:
        return Checkpoint(offset=0, expected_size=self.job.expected_size,
                          checksum=str(self.job.checksum) if self.job.checksum else None,
                          source=dict(self.identity or self.job.source.identity()),
                          image_id=self.job.image_id)

    def _restart(self, why: str) -> None:
        LOG.warning('%s: %s: starting over from byte 0 (%d bytes copied before are '
                    'discarded)', self.job.description, why, self.offset)
        self.restarts += 1
        self.checkpointer.reset(self._meta())
        os.ftruncate(self.fd, 0)
        self.offset = 0
        self.writer.sparse_bytes = 0
        self.next_checkpoint = self.step
        if self.job.checksum is not None:
            self.hasher = self.job.checksum.new()
        if self.job.signature is not None:
            self.verifier = self.job.signature()

    def _digests(self) -> list[Callable[[memoryview], None]]:
        """The hash stages: the image hash, then the signature's digest."""
        return [d.update for d in (self.hasher, self.verifier) if d is not None]

    # -- transfer --------------------------------------------------------

    def _transfer(self) -> None:
        job = self.job
        failures = 0            # in a row without a new byte (options.retries bounds it)
        offset_at_failure = self.offset
        if self.total is not None:
            fsutil.check_space(self.paths, job.description, self.total, self.offset)
        self.progress.start(self.offset, self.total)
        LOG.info('%s: copying to %s%s', job.description, self.paths.target,
                 f' from byte {self.offset}' if self.offset else '')
        while True:
            self.cancel.check(job.description)
            try:
                stream = job.source.open(self.offset)
                try:
                    if not self._accept(stream):
                        continue
                    pump(stream, self.pool, self._digests(), self._write,
                         self.cancel, self.limiter, job.description)
                finally:
                    stream.close()
                if stream.total is not None and self.offset < stream.total:
                    raise TransientSourceError(
                        f'{job.source.description} ended at byte {self.offset} of '
                        f'{stream.total}')
                return
            except TransientSourceError as exc:
                self.cancel.check(job.description)
                if self.offset > offset_at_failure:
                    failures = 0    # progress since the last failure: a new streak
                offset_at_failure = self.offset
                failures += 1
                if failures > self.opts.retries:
                    kept = (f'{self.paths.partial} ({self.offset} bytes) is kept and '
                            f'the next copy resumes from it' if self.offset
                            else 'no data was received')
                    raise exceptions.RetriesExhausted(
                        f'{job.description}: giving up after {self.opts.retries} '
                        f'retries in a row without new data; last error: {exc}; '
                        f'{kept}') from exc
                self.retries += 1
                delay = min(self.opts.retry_backoff_max,
                            self.opts.retry_backoff * 2 ** (failures - 1))
                LOG.warning('%s: %s; retry %d of %d in %.1fs from byte %d',
                            job.description, exc, failures, self.opts.retries,
                            delay, self.offset)
                if self.cancel.wait(delay):
                    self.cancel.check(job.description)

    def _accept(self, stream: Stream) -> bool:
        """Check a new stream against the partial data; False means reopen."""
        new_identity = self.job.source.identity()
        if stream.start != self.offset:
            if stream.start != 0:
                raise exceptions.SourceError(
                    f'{self.job.source.description}: asked for byte {self.offset}, '
                    f'got data from byte {stream.start}')
            self._restart(f'{self.job.source.description} ignored the range '
                          f'request for byte {self.offset} and sends the whole image')
        elif self.offset and self.identity is not None:
            conflict = identity_conflict(self.identity, new_identity)
            if conflict:
                self._restart(f'{self.job.source.description} changed since the '
                              f'partial copy was made ({conflict})')
                return False
        if self.identity != new_identity:
            self.identity = new_identity
            self.checkpointer.set_meta(self._meta())
        if self.resumed_from is None:
            self.resumed_from = stream.start
        total = stream.total
        if total is not None:
            expected = self.job.expected_size
            if expected is not None and total != expected:
                raise exceptions.SizeMismatch(
                    f'{self.job.description}: the source has {total} bytes, the '
                    f'image {expected}; nothing was published to {self.paths.target}')
            self.total = total
            self.progress.total = total
            if self.received == 0:      # nothing written yet by this run
                fsutil.check_space(self.paths, self.job.description, total,
                                   self.offset)
        return True

    def _write(self, buffer: Buffer, n: int) -> None:
        """The writer stage: the buffer the hasher stage just hashed."""
        offset = self.offset
        if self.total is not None and offset + n > self.total:
            raise exceptions.SizeMismatch(
                f'{self.job.description}: the source sent more than the '
                f'{self.total} bytes expected; nothing was published to '
                f'{self.paths.target}')
        self.writer.write(buffer, n, offset)
        self.offset = offset + n
        self.received += n
        if self.offset >= self.next_checkpoint:
            self.checkpointer.request(self.offset, max_lag=self.step)
            self.next_checkpoint = self.offset + self.step
        self.progress.update(self.offset, self.received)

    # -- verification ----------------------------------------------------

    def _verify(self) -> None:
        job = self.job
        if job.expected_size is not None and self.offset != job.expected_size:
            raise exceptions.SizeMismatch(
                f'{job.description}: received {self.offset} bytes, the image has '
                f'{job.expected_size}; the partial copy was deleted and nothing was '
                f'published to {self.paths.target}')
        if job.checksum is not None:
            actual = self.hasher.hexdigest()
            if actual != job.checksum.hexdigest:
                raise exceptions.ChecksumMismatch(
                    f'{job.description}: checksum mismatch copying to '
                    f'{self.paths.target}: expected {job.checksum}, got '
                    f'{job.checksum.algo}:{actual}; the partial copy was deleted and '
                    f'nothing was published')
        if self.verifier is not None:
            signatures.check(self.verifier, f'{job.description}: the copy to '
                             f'{self.paths.target}', 'the partial copy was deleted '
                             'and nothing was published')

    def _result(self, seconds: float) -> CopyResult:
        rate = self.received / seconds / (1 << 20) if seconds > 0 else 0.0
        LOG.info('%s: copied to %s: %d bytes (%d received in %.1fs, %.1f MiB/s, '
                 '%d retries, %d zero bytes left as holes)%s',
                 self.job.description, self.paths.target, self.offset,
                 self.received, seconds, rate, self.retries, self.writer.sparse_bytes,
                 (f', {self.job.checksum.algo} verified' if self.job.checksum else '')
                 + (', signature verified' if self.job.signature else ''))
        return CopyResult(
            target=self.paths.target, size=self.offset,
            bytes_transferred=self.received,
            resumed_from=self.resumed_from or 0,
            restarts_from_zero=self.restarts, retries=self.retries, seconds=seconds,
            checksum=self.job.checksum, sparse_bytes=self.writer.sparse_bytes,
            direct_bytes=self.direct_bytes,
            throttled_seconds=self.limiter.slept if self.limiter else 0.0,
            signature_verified=self.verifier is not None)
