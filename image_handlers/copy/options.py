"""What a copy is asked to do (CopyOptions) and what it did (CopyResult)."""
from __future__ import annotations

import dataclasses

from image_handlers import exceptions
from image_handlers.copy.checksum import Checksum


@dataclasses.dataclass(frozen=True)
class CopyOptions:
    """Tuning of one copy; the defaults suit a compute host."""

    buffer_size: int = 8 << 20          # bytes per read: large keeps Python off the hot path
    bandwidth_limit: int = 0            # bytes/s, 0 = unlimited
    retries: int = 5                    # resumes in a row without new progress
    retry_backoff: float = 0.5          # seconds before the first retry, doubled each time
    retry_backoff_max: float = 30.0
    checkpoint_interval: int = 64 << 20  # bytes between durable checkpoints
    progress_interval: float = 10.0     # seconds between progress log lines
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    sparse: bool = True                 # do not write all-zero blocks
    direct_io: bool = True              # write by O_DIRECT where the file system can
    lock_dir: str | None = None         # where per-image lock files live (default: target dir)

    def __post_init__(self) -> None:
        checks = [
            ('buffer_size', self.buffer_size >= 4096),
            ('bandwidth_limit', self.bandwidth_limit >= 0),
            ('retries', self.retries >= 0),
            ('retry_backoff', self.retry_backoff >= 0),
            ('retry_backoff_max', self.retry_backoff_max >= 0),
            ('checkpoint_interval', self.checkpoint_interval > 0),
            ('progress_interval', self.progress_interval > 0),
            ('connect_timeout', self.connect_timeout > 0),
            ('read_timeout', self.read_timeout > 0),
        ]
        for name, ok in checks:
            if not ok:
                raise exceptions.BadInput(
                    f'copy option {name}={getattr(self, name)!r} is out of range')


@dataclasses.dataclass(frozen=True)
class CopyResult:
    target: str
    size: int
    bytes_transferred: int      # received from the source in this run
    resumed_from: int           # offset this run's data started at
    restarts_from_zero: int     # times the source ignored Range and resent everything
    retries: int
    seconds: float
    checksum: Checksum | None   # the verified checksum, None when none was given
    sparse_bytes: int           # zero bytes skipped instead of written
    reused_existing: bool = False
    direct_bytes: int = 0       # of the bytes written, those that bypassed the page cache
    throttled_seconds: float = 0.0  # time spent waiting on the bandwidth limit
    signature_verified: bool = False    # the image's signature held, in the same pass
    # Set when the bytes came from a file of this host (another target of the same
    # image, published while this copy waited for the image lock), not the source:
    # bytes_transferred is then 0.
    copied_from: str | None = None
