"""A job: work that goes on after a handler returned a usable disk (a fill).

Its record lives in ``state_dir/jobs/<id>.json`` so it outlives the command or
nova-compute that started it: a restart finds it, and resumes or reports it.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

QUEUED, RUNNING, DONE, FAILED, CANCELLED = (
    'queued', 'running', 'done', 'failed', 'cancelled')
TERMINAL = frozenset({DONE, FAILED, CANCELLED})


@dataclasses.dataclass
class Job:
    id: str
    kind: str                       # an ``image_handlers.jobs`` entry point
    params: dict[str, Any]          # what the kind needs (paths, image id, ...)
    state: str = QUEUED
    description: str = ''
    created: float = dataclasses.field(default_factory=time.time)
    updated: float = dataclasses.field(default_factory=time.time)
    done_bytes: int = 0
    total_bytes: int | None = None
    error: str | None = None        # why it failed, for the log and ``jobs show``
    cancel_requested: bool = False
    runs: int = 0                   # how many times a worker started it
    config_files: list[str] = dataclasses.field(default_factory=list)
    config_dirs: list[str] = dataclasses.field(default_factory=list)
    result: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'Job':
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
