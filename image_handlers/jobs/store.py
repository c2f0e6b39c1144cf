"""Job records on disk: one JSON file per job, replaced atomically, plus a lock file
a worker holds while it runs the job (a free lock on a running job = its worker
died, so the job can be resumed)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
import uuid
from typing import Iterator

from oslo_log import log as logging

from image_handlers import exceptions
from image_handlers import statefile
from image_handlers.jobs.model import Job

LOG = logging.getLogger(__name__)
_ID = re.compile(r'^[0-9a-f]{32}$')


class JobStore:
    def __init__(self, state_dir: str) -> None:
        self.directory = os.path.join(state_dir, 'jobs')

    def new_id(self) -> str:
        return uuid.uuid4().hex

    def _path(self, job_id: str, suffix: str = '.json') -> str:
        if not _ID.match(job_id or ''):
            raise exceptions.BadInput(
                f'{job_id!r} is not a job id (32 hex digits, as "image-handlers jobs '
                f'list" shows them)')
        return os.path.join(self.directory, job_id + suffix)

    def save(self, job: Job) -> None:
        statefile.write_json(self._path(job.id), job.to_dict())

    def get(self, job_id: str) -> Job:
        path = self._path(job_id)
        try:
            with open(path, encoding='utf-8') as f:
                return Job.from_dict(json.load(f))
        except FileNotFoundError:
            raise exceptions.BadInput(
                f'no job {job_id} in {self.directory}: "image-handlers jobs list" '
                f'shows the known ones') from None
        except (OSError, ValueError, TypeError) as exc:
            raise exceptions.ImageHandlerError(
                f'job record {path} is unreadable ({exc}): inspect or remove it')

    def all(self) -> list[Job]:
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        jobs = []
        for name in names:
            if name.endswith('.json') and _ID.match(name[:-5]):
                try:
                    jobs.append(self.get(name[:-5]))
                except exceptions.ImageHandlerError as exc:
                    LOG.warning('%s', exc)
        return sorted(jobs, key=lambda j: j.created)

    @contextlib.contextmanager
    def running(self, job_id: str, patience: float = 1.0) -> Iterator[bool]:
        """Hold the job's run lock; yields False when another live worker has it.
        Tried for ``patience`` seconds: ``is_running`` probes take it for an instant,
        and a worker starting just then must not take the probe for a worker."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = os.open(self._path(job_id, '.lock'), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            deadline = time.monotonic() + patience
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.01)
            yield True
        finally:
            os.close(fd)

    def is_running(self, job_id: str) -> bool:
        """True while a live worker holds the job's lock (probed, never waited)."""
        with self.running(job_id, patience=0) as got:
            return not got
