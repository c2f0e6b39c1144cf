"""What a run reports: every attempt with its outcome and reason, and the result.

The same dataclasses back ``fetch``, ``explain`` and the ``--json`` output, so what an
operator reads is exactly what drove the run.
"""
from __future__ import annotations

import dataclasses
from typing import Any

USED = 'used'            # this pair provided the image
SKIPPED = 'skipped'      # the handler decided it cannot serve this pair (reason says why)
FAILED = 'failed'        # the handler accepted, then acting failed (reason is the error)
ELIGIBLE = 'eligible'    # explain only: the handler would serve this pair


@dataclasses.dataclass
class Attempt:
    handler: str
    location: str | None
    outcome: str
    reason: str
    zero_copy: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {'handler': self.handler, 'location': self.location,
                'outcome': self.outcome, 'reason': self.reason}


@dataclasses.dataclass
class FetchResult:
    image_id: str
    target: str
    handler: str | None = None
    location: str | None = None
    zero_copy: bool = False
    bytes_transferred: int = 0
    seconds: float = 0.0
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    # False when the disk still reads from a backing source (copy-on-read fill).
    complete: bool = True
    dry_run: bool = False
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.handler is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            'image_id': self.image_id, 'target': self.target,
            'handler': self.handler, 'location': self.location,
            'zero_copy': self.zero_copy,
            'bytes_transferred': self.bytes_transferred,
            'seconds': round(self.seconds, 6),
            'attempts': [a.to_dict() for a in self.attempts],
            'complete': self.complete, 'dry_run': self.dry_run,
            'details': self.details,
        }
