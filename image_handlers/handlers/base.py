"""The handler interface: decide (can I, and if not why not), then act.

``decide`` must not change anything: ``explain`` calls it alone, and ``fetch`` calls
it and then ``act`` with the same inputs, so the verdict an operator reads is the one
that drove the run.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar

from oslo_config import cfg

from image_handlers.image import ImageInfo
from image_handlers.locations import Location
from image_handlers.targets import Target

ANY_VIRT_DRIVER = '*'


@dataclasses.dataclass
class Request:
    """One image to provide for one target on this host."""

    image: ImageInfo
    target: Target
    virt_driver: str = 'libvirt'
    # Why Nova asks (spawn, rescue, unshelve, live_migration, ...): moves may want a
    # fully independent disk (flatten) where a spawn does not.
    purpose: str = 'spawn'
    size: int | None = None
    # Glance's API root and a callable giving fresh auth headers for its data API.
    glance_endpoint: str = ''
    glance_auth_headers: Callable[[], dict[str, str]] | None = None


@dataclasses.dataclass
class Decision:
    accepted: bool
    reason: str
    zero_copy: bool = False
    # Whatever decide() learned that act() needs (so act does not look it up again).
    plan: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def accept(cls, reason: str, zero_copy: bool, **plan) -> 'Decision':
        return cls(True, reason, zero_copy, plan)

    @classmethod
    def refuse(cls, reason: str) -> 'Decision':
        return cls(False, reason)


@dataclasses.dataclass
class Provided:
    """What act() produced.

    ``complete`` is False when the disk is usable now but still reads from a backing
    source until ``wait_complete`` (a background fill) returns.
    """

    zero_copy: bool
    bytes_transferred: int
    complete: bool = True
    wait_complete: Callable[[float | None], None] | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


class Handler(abc.ABC):
    """A way to provide an image from one kind of location."""

    name: ClassVar[str]
    #: Virt drivers this handler can serve at all ({'*'} for any).
    virt_drivers: ClassVar[frozenset[str]] = frozenset({ANY_VIRT_DRIVER})
    #: Target kinds (targets.FILE, targets.RBD) this handler can produce.
    target_kinds: ClassVar[frozenset[str]]
    #: Location schemes this handler reads.
    schemes: ClassVar[frozenset[str]]
    #: True when a success means no image bytes were copied (logged as a fallback
    #: when such a handler is passed over).
    zero_copy: ClassVar[bool] = False

    def __init__(self, conf: cfg.ConfigOpts):
        self.conf = conf

    def serves(self, request: Request) -> str | None:
        """None when this handler can serve the request's driver and target kind,
        else the reason it cannot."""
        if (ANY_VIRT_DRIVER not in self.virt_drivers
                and request.virt_driver not in self.virt_drivers):
            return (f'{self.name} does not serve virt driver {request.virt_driver!r} '
                    f'(serves {", ".join(sorted(self.virt_drivers))})')
        if request.target.kind not in self.target_kinds:
            return (f'{self.name} cannot produce a {request.target.kind} target '
                    f'(produces {", ".join(sorted(self.target_kinds))})')
        return None

    def candidates(self, request: Request) -> list[Location]:
        """Locations this handler would consider (extra ones it brings, too)."""
        return [loc for loc in request.image.locations if loc.scheme in self.schemes]

    @abc.abstractmethod
    def decide(self, request: Request, location: Location) -> Decision:
        """Can this handler serve ``request`` from ``location``? Never changes state."""

    @abc.abstractmethod
    def act(self, request: Request, location: Location, decision: Decision) -> Provided:
        """Provide the image at the target; raise with a clear message on failure,
        leaving nothing at the target."""
