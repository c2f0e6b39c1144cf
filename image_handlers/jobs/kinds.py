"""What a job kind is: a resumable piece of work, found by name (stevedore).

A kind must be safe to run again from the start after a crash or a kill -9: the
worker simply runs it again, and the kind resumes from what is on disk.
"""
from __future__ import annotations

import abc
import functools
from typing import Callable, ClassVar

import stevedore
from oslo_config import cfg

from image_handlers import exceptions
from image_handlers.jobs.model import Job

NAMESPACE = 'image_handlers.jobs'


class JobContext:
    """What a running kind may use: the config, progress, and cancellation."""

    def __init__(self, conf: cfg.ConfigOpts, report: Callable[[int, int | None], None],
                 cancelled: Callable[[], bool], job_id: str = '') -> None:
        self.conf = conf
        self.job_id = job_id
        self.report = report            # report(done_bytes, total_bytes)
        self.cancelled = cancelled      # poll it; raise CopyCancelled when True


class JobKind(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def run(self, job: Job, ctx: JobContext) -> dict:
        """Do (or finish) the work; return what ``jobs show`` reports as result.
        Raise with a clear message on failure."""


@functools.cache
def _kinds() -> dict[str, type[JobKind]]:
    manager = stevedore.ExtensionManager(NAMESPACE, invoke_on_load=False)
    return {ext.name: ext.plugin for ext in manager}


def kind(name: str) -> JobKind:
    try:
        return _kinds()[name]()
    except KeyError:
        raise exceptions.ConfigError(
            f'no job kind {name!r} is installed (installed: '
            f'{", ".join(sorted(_kinds())) or "none"})') from None
