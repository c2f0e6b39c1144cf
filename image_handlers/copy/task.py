"""``copy()`` and CopyTask: a copy runs on a thread of its own so the caller
(Nova's handler, the CLI) can watch progress, cancel, or wait."""
from __future__ import annotations

import threading

from oslo_log import log as logging

from image_handlers import exceptions
from image_handlers.copy import engine, locking
from image_handlers.copy.cancel import CancelToken
from image_handlers.copy.checksum import Checksum
from image_handlers.copy.http_source import HttpSource
from image_handlers.copy.options import CopyOptions, CopyResult
from image_handlers.copy.progress import Progress
from image_handlers.copy.source import Source

LOG = logging.getLogger(__name__)


class CopyTask:
    """A running copy. ``wait()`` returns its CopyResult or re-raises its error."""

    def __init__(self, job: engine.CopyJob) -> None:
        self.job = job
        self.description = job.description
        self.target = job.target
        self._cancel = CancelToken()
        self._progress = Progress(job.description, job.options.progress_interval)
        self._done = threading.Event()
        self._result: CopyResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f'copy {job.target}')

    def start(self) -> 'CopyTask':
        self._thread.start()
        return self

    @property
    def progress(self) -> tuple[int, int | None]:
        """(bytes in the target so far, total size or None when unknown)."""
        return self._progress.snapshot()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop soon; the partial file is kept so a later copy resumes."""
        self._cancel.cancel()

    def wait(self, timeout: float | None = None) -> CopyResult:
        """Block until the copy ends; TimeoutError if still running after
        ``timeout`` seconds (the copy goes on)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f'copy of {self.description} still running after '
                               f'{timeout}s')
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _run(self) -> None:
        try:
            self._result = engine.run(self.job, self._cancel, self._progress)
        except BaseException as exc:
            LOG.info('%s: copy to %s failed: %s', self.description, self.target, exc)
            self._error = exc
        finally:
            self._done.set()


def copy(source: Source | str, target: str, checksum: Checksum | str | None = None,
         expected_size: int | None = None, options: CopyOptions | None = None,
         lock_name: str | None = None, description: str | None = None,
         signature=None, image_id: str | None = None) -> CopyTask:
    """Start copying ``source`` (a Source or an http(s) URL) to the file
    ``target``; return the running task at once. ``signature``: a factory of
    fresh signature verifiers (trust.signature.BoundSignature.verifier), checked in
    the same pass as the hash.

    Malformed arguments raise BadInput here; everything that happens while
    copying (including an existing target) is raised by ``task.wait()``.
    """
    options = options or CopyOptions()
    if isinstance(source, str):
        source = HttpSource(source)
    apply_timeouts = getattr(source, 'apply_timeouts', None)
    if apply_timeouts is not None:
        apply_timeouts(options.connect_timeout, options.read_timeout)
    if isinstance(checksum, str):
        checksum = Checksum.parse(checksum)
    if not target or not isinstance(target, str) or target.endswith('/'):
        raise exceptions.InvalidTarget(
            f'invalid target {target!r}: give the path of the file to create')
    if expected_size is not None and (
            not isinstance(expected_size, int) or expected_size < 0):
        raise exceptions.BadInput(f'invalid expected size {expected_size!r}')
    if lock_name is not None:
        locking.lock_path(options.lock_dir or '.', lock_name)   # validates the name
    job = engine.CopyJob(source=source, target=target, checksum=checksum,
                         expected_size=expected_size, options=options,
                         lock_name=lock_name,
                         description=description or source.description,
                         signature=signature, image_id=image_id)
    return CopyTask(job).start()
