"""Jobs: work that goes on after a handler returned a usable disk (fills).

    job = runner.submit(conf, 'overlay_fill', {'disk': path}, 'fill disk X')
    runner.wait(conf, job.id, timeout=600)

Kinds are ``image_handlers.jobs`` entry points; records live in ``state_dir/jobs``.
"""
from image_handlers.jobs.kinds import JobContext, JobKind
from image_handlers.jobs.model import (CANCELLED, DONE, FAILED, QUEUED, RUNNING,
                                       TERMINAL, Job)

__all__ = ['Job', 'JobKind', 'JobContext', 'QUEUED', 'RUNNING', 'DONE', 'FAILED',
           'CANCELLED', 'TERMINAL']
