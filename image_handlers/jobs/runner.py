"""Start, run, resume, wait for and cancel jobs.

A job runs in a worker process of its own (``python -m image_handlers.jobs.worker``)
started in a new session, so it survives the command or nova-compute that started
it. The worker holds the job's lock while it runs; a job left ``running`` or
``queued`` with a free lock lost its worker and ``resume_orphans`` (called by the
``jobs resume`` command and when the Nova hooks start) starts it again: every kind
resumes from what is on disk.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

from oslo_config import cfg
from oslo_log import log as logging

from image_handlers import conf as ih_conf
from image_handlers import exceptions
from image_handlers import statefile
from image_handlers.jobs import kinds
from image_handlers.jobs.model import (CANCELLED, DONE, FAILED, QUEUED, RUNNING,
                                       Job)
from image_handlers.jobs.store import JobStore

LOG = logging.getLogger(__name__)
PROGRESS_SAVE_INTERVAL = 0.5        # seconds between two saves of a job's progress


def store(conf: cfg.ConfigOpts) -> JobStore:
    return JobStore(conf[ih_conf.GROUP].state_dir)


def submit(conf: cfg.ConfigOpts, kind: str, params: dict, description: str) -> Job:
    """Record a new job and start its worker; returns at once."""
    kinds.kind(kind)                     # unknown kinds fail here, not in the worker
    jobs = store(conf)
    job = Job(id=jobs.new_id(), kind=kind, params=params, description=description,
              config_files=list(conf.config_file or []),
              config_dirs=list(conf.config_dir or []))
    jobs.save(job)
    spawn(conf, job)
    LOG.info('job %s (%s) started: %s', job.id, kind, description)
    return job


def spawn(conf: cfg.ConfigOpts, job: Job) -> None:
    """Start a detached worker for ``job`` (its own session: it outlives us)."""
    argv = [sys.executable, '-m', 'image_handlers.jobs.worker',
            '--state-dir', conf[ih_conf.GROUP].state_dir, job.id]
    log = os.path.join(store(conf).directory, f'{job.id}.log')
    with open(log, 'ab') as out:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                         stderr=subprocess.STDOUT, start_new_session=True,
                         close_fds=True)


def run(conf: cfg.ConfigOpts, job_id: str) -> Job:
    """Run one job in this process (the worker's body); never raises for the job's
    own failure: that is recorded in the job and logged at ERROR."""
    jobs = store(conf)
    with jobs.running(job_id) as got:
        if not got:
            LOG.info('job %s already has a live worker', job_id)
            return jobs.get(job_id)
        job = jobs.get(job_id)
        if job.finished:
            return job
        if job.cancel_requested:
            return _finish(jobs, job, CANCELLED, None)
        job.state, job.runs, job.updated = RUNNING, job.runs + 1, time.time()
        jobs.save(job)

        saved = [0.0]

        def report(done: int, total: int | None) -> None:
            """Progress, kept in memory and saved at most every half second (each
            save is an fsync: per chunk it cost a fill 0.4 s per GiB)."""
            job.done_bytes, job.total_bytes, job.updated = done, total, time.time()
            if job.updated - saved[0] >= PROGRESS_SAVE_INTERVAL or done == total:
                saved[0] = job.updated
                jobs.save(job)

        def cancelled() -> bool:
            return jobs.get(job_id).cancel_requested

        try:
            job.result = kinds.kind(job.kind).run(job, kinds.JobContext(
                conf, report, cancelled, job.id)) or {}
        except exceptions.CopyCancelled:
            return _finish(jobs, job, CANCELLED, None)
        except Exception as exc:  # noqa: BLE001 - recorded in the job, never lost
            LOG.error('job %s (%s: %s) failed: %s', job.id, job.kind, job.description,
                      exc)
            return _finish(jobs, job, FAILED, f'{type(exc).__name__}: {exc}')
        LOG.info('job %s (%s) done: %s', job.id, job.kind, job.description)
        return _finish(jobs, job, DONE, None)


def _finish(jobs: JobStore, job: Job, state: str, error: str | None) -> Job:
    job.state, job.error, job.updated = state, error, time.time()
    jobs.save(job)
    return job


def resume_orphans(conf: cfg.ConfigOpts) -> list[Job]:
    """Start a worker for every unfinished job whose worker is gone."""
    jobs = store(conf)
    resumed = []
    for name in statefile.remove_stale_tmps(jobs.directory):
        LOG.info('removed %s, left in %s by a writer that died', name, jobs.directory)
    for job in jobs.all():
        if job.state in (QUEUED, RUNNING) and not jobs.is_running(job.id):
            LOG.warning('job %s (%s: %s) lost its worker (state %s after %d runs): '
                        'resuming it', job.id, job.kind, job.description, job.state,
                        job.runs)
            job.state = QUEUED      # until the new worker holds the lock
            jobs.save(job)
            spawn(conf, job)
            resumed.append(job)
    return resumed


def retry(conf: cfg.ConfigOpts, job_id: str) -> Job:
    """Start a failed or cancelled job again (an operator's call, e.g. once its
    target is back); a running one is left alone."""
    jobs = store(conf)
    job = jobs.get(job_id)
    if job.state == DONE or (not job.finished and jobs.is_running(job_id)):
        return job
    job.state, job.error, job.cancel_requested = QUEUED, None, False
    jobs.save(job)
    spawn(conf, job)
    LOG.info('job %s (%s) started again: %s', job.id, job.kind, job.description)
    return job


def cancel(conf: cfg.ConfigOpts, job_id: str) -> Job:
    """Ask the job to stop; it ends ``cancelled`` with what it did kept on disk."""
    jobs = store(conf)
    job = jobs.get(job_id)
    if not job.finished:
        job.cancel_requested = True
        jobs.save(job)
        if not jobs.is_running(job_id):        # no worker to notice: end it here
            job = _finish(jobs, job, CANCELLED, None)
    return job


def wait(conf: cfg.ConfigOpts, job_id: str, timeout: float | None = None,
         poll: float = 0.1, watch: Callable[[Job], None] | None = None) -> Job:
    """Block until the job ends (TimeoutError after ``timeout`` seconds);
    ``watch`` is called with the job record each time it is read."""
    jobs = store(conf)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = jobs.get(job_id)
        if watch is not None:
            watch(job)
        if job.finished:
            return job
        if (job.state == RUNNING and not jobs.is_running(job_id)
                and jobs.get(job_id).state == RUNNING):
            # No worker holds it, and it did not just finish (read again after
            # the lock check): its worker died. Say so rather than wait for ever.
            raise exceptions.ImageHandlerError(
                f'job {job_id} has no worker (it died); "image-handlers jobs resume" '
                f'starts it again')
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f'job {job_id} still {job.state} after {timeout} s')
        time.sleep(poll)
