"""What a run reports: every attempt with its outcome and reason, and the result.

The same dataclasses back ``fetch``, ``explain``, the ``copy`` command and the
``--json`` output, so what an operator reads is exactly what drove the run.

A disk may be usable at once and still read from something else: a clone's RBD
parent snapshot, a shared file behind an overlay, a remote LUN until a fill ends.
``Dependency`` names that source and the pin that keeps it alive, so nobody deletes
what a running instance still reads.
"""
from __future__ import annotations

import dataclasses
from typing import Any

USED = 'used'            # this pair provided the image
SKIPPED = 'skipped'      # the handler decided it cannot serve this pair (reason says why)
FAILED = 'failed'        # the handler accepted, then acting failed (reason is the error)
ELIGIBLE = 'eligible'    # explain only: the handler would serve this pair

RAW, QCOW2 = 'raw', 'qcow2'

# Dependency kinds.
RBD_PARENT = 'rbd_parent'
SHARED_FILE = 'shared_file'
REMOTE_LUN = 'remote_lun'


@dataclasses.dataclass(frozen=True)
class Dependency:
    """What a disk still reads from, what keeps that alive, and what ends it."""

    kind: str        # RBD_PARENT, SHARED_FILE, REMOTE_LUN
    source: str      # e.g. images/<id>@snap, /mnt/images/<id>, iscsi://portal/iqn/1
    pin: str         # e.g. "protected snapshot", "hardlink <path> (inode N)"
    until: str       # what removes the dependency: "rbd flatten", "job <id>", ...

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Provided:
    """What a handler's ``act`` produced."""

    method: str                      # clone, reflink, hardlink, overlay, copy, ...
    bytes_copied: int                # image bytes written into the disk by this run
    disk_format: str = RAW           # format of the disk as created (RAW or QCOW2)
    depends_on: Dependency | None = None
    job: str | None = None           # a job that goes on after act returned
    verified: str | None = None      # how the bytes are known to be the image's
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def zero_copy(self) -> bool:
        return self.bytes_copied == 0

    @classmethod
    def from_copy(cls, copied, disk_format: str | None = None) -> 'Provided':
        """A finished copy engine run (a CopyResult), as stream_copy and the
        ``copy`` command report it: the disk holds the image's bytes as they are."""
        return cls(
            method=('reused' if copied.reused_existing
                    else 'local copy' if copied.copied_from else 'copy'),
            bytes_copied=copied.bytes_transferred,
            disk_format=disk_format or RAW,
            verified=' and '.join(
                ([str(copied.checksum)] if copied.checksum else [])
                + (['signature'] if copied.signature_verified else [])) or None,
            details={'resumed_from': copied.resumed_from,
                     'restarts_from_zero': copied.restarts_from_zero,
                     'retries': copied.retries, 'size': copied.size,
                     'sparse_bytes': copied.sparse_bytes,
                     'reused_existing': copied.reused_existing,
                     **({'copied_from': copied.copied_from}
                        if copied.copied_from else {})})


@dataclasses.dataclass
class Attempt:
    handler: str
    location: str | None
    outcome: str
    reason: str
    # explain: the location's rank and what this host measured of it (weight,
    # mib_per_s or None, recent_failures, last_failure_seconds_ago, failure_score)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {'handler': self.handler, 'location': self.location,
                'outcome': self.outcome, 'reason': self.reason,
                'details': self.details}


@dataclasses.dataclass
class FetchResult:
    image_id: str | None
    target: str
    handler: str | None = None
    location: str | None = None
    method: str | None = None
    zero_copy: bool = False
    bytes_copied: int = 0
    disk_format: str | None = None
    depends_on: Dependency | None = None
    job: str | None = None
    verified: str | None = None
    seconds: float = 0.0
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    dry_run: bool = False
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.handler is not None

    @property
    def complete(self) -> bool:
        """False while a job still works on the disk (a fill)."""
        return self.job is None

    def use(self, handler: str, location: str | None, provided: Provided) -> None:
        """Record the pair that provided the disk (the chain and ``copy`` alike)."""
        self.handler, self.location = handler, location
        self.method = provided.method
        self.zero_copy = provided.zero_copy
        self.bytes_copied = provided.bytes_copied
        self.disk_format = provided.disk_format
        self.depends_on = provided.depends_on
        self.job = provided.job
        self.verified = provided.verified
        self.details.update(provided.details)

    def to_dict(self) -> dict[str, Any]:
        return {
            'image_id': self.image_id, 'target': self.target,
            'handler': self.handler, 'location': self.location,
            'method': self.method, 'zero_copy': self.zero_copy,
            'bytes_copied': self.bytes_copied, 'disk_format': self.disk_format,
            'depends_on': self.depends_on.to_dict() if self.depends_on else None,
            'job': self.job, 'complete': self.complete, 'verified': self.verified,
            'seconds': round(self.seconds, 6),
            'attempts': [a.to_dict() for a in self.attempts],
            'dry_run': self.dry_run, 'details': self.details,
        }
