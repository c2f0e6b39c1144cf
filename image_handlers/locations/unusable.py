"""Locations no handler can use: unknown schemes and malformed URLs.

They are kept, not dropped, so that ``explain`` can say why they were ignored instead
of guessing at what they might mean.
"""
from __future__ import annotations

import dataclasses

from image_handlers.locations.base import Location


@dataclasses.dataclass(frozen=True)
class UnknownLocation(Location):
    """A URL whose scheme no location class knows."""

    found_scheme: str = ''

    @property
    def usable(self) -> bool:
        return False

    @property
    def problem(self) -> str:
        return (f'unknown location scheme {self.found_scheme!r}: no handler knows '
                f'how to read it')


@dataclasses.dataclass(frozen=True)
class MalformedLocation(Location):
    """A URL of a known scheme that failed that scheme's validation."""

    error: str = ''

    @property
    def usable(self) -> bool:
        return False

    @property
    def problem(self) -> str:
        return self.error
