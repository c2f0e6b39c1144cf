"""The source interface of the copy engine: anything readable from an offset.

HTTP is the first implementation; an RBD (or any ranged) source only has to
provide ``open(offset)``, ``identity()`` and ``description``.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from image_handlers import exceptions


class TransientSourceError(exceptions.SourceError):
    """A failure worth retrying from the current offset (dropped connection,
    timeout, short body, server error)."""


@runtime_checkable
class Stream(Protocol):
    """One read of the source, from ``start`` to its end."""

    start: int              # where the data really starts (0 if Range was ignored)
    total: int | None       # size of the whole object, when known

    def readinto(self, buf: memoryview) -> int:
        """Fill ``buf`` with the next bytes; 0 only at the end of the data."""

    def close(self) -> None:
        """Release the stream; safe to call more than once."""


@runtime_checkable
class Source(Protocol):
    description: str        # safe for logs: never a token or a password

    def open(self, offset: int) -> Stream:
        """Start reading at ``offset`` (the stream may start at 0 instead)."""

    def identity(self) -> dict[str, Any]:
        """Validators stored in the checkpoint: a changed value means the
        partial data belongs to another object and must be discarded."""


def identity_conflict(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Name the first validator known on both sides that differs, else None."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a is not None and b is not None and a != b:
            return f'{key} was {a!r}, now {b!r}'
    return None


def abort_stream(stream: Stream) -> None:
    """Wake a reader blocked in ``stream.readinto`` (used to cancel or stop)."""
    abort = getattr(stream, 'abort', None)
    if abort is not None:
        abort()
    else:
        stream.close()
