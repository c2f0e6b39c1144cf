"""The handler interface: decide (can I, and if not why not), then act.

``decide`` must not change anything: ``explain`` calls it alone, and ``fetch`` calls
it and then ``act`` with the same inputs, so the verdict an operator reads is the one
that drove the run. There is one way to say no: ``raise Refused(reason)``, from
``serves``, ``decide`` or anything they call.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar

from oslo_config import cfg

from image_handlers.conf import GROUP
from image_handlers.exceptions import Refused
from image_handlers.image import ImageInfo
from image_handlers.locations import Location
from image_handlers.results import Provided
from image_handlers.targets import Target
from image_handlers.trust.expectation import Expectation, expect
from image_handlers.trust.policy import TrustPolicy

__all__ = ['ANY_VIRT_DRIVER', 'Decision', 'Handler', 'Provided', 'Refused', 'Request']

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
    # Only handlers that copy no bytes may serve it (e.g. a disk Nova's own format
    # checks will never see: a copy of an untrusted qcow2 must not become one).
    zero_copy_only: bool = False
    # What every path must prove of the bytes (hash, signature): decided once by
    # the chain (trust.expectation.expect); by default the recorded hash only.
    expect: Expectation | None = None
    # Where the record was read (GlanceReader, or Nova's image API with the request
    # context): a handler that asks Glance for more (rbd_import) asks it there.
    image_source: Any = None

    def __post_init__(self) -> None:
        if self.expect is None:
            self.expect = expect(self.image, TrustPolicy())


@dataclasses.dataclass
class Decision:
    """A handler's yes: what it would do and why. A no is ``raise Refused(reason)``."""

    reason: str
    method: str                     # what act() will do: clone, reflink, copy, ...
    # Whatever decide() learned that act() needs (so act does not look it up again).
    plan: dict[str, Any] = dataclasses.field(default_factory=dict)


class Handler(abc.ABC):
    """A way to provide an image from one kind of location."""

    name: ClassVar[str]
    #: Virt drivers this handler can serve at all ({'*'} for any).
    virt_drivers: ClassVar[frozenset[str]] = frozenset({ANY_VIRT_DRIVER})
    #: Target kinds (targets.FILE, targets.RBD) this handler can produce.
    target_kinds: ClassVar[frozenset[str]]
    #: Location schemes this handler reads (each parsed by its location class, an
    #: ``image_handlers.locations`` entry point).
    schemes: ClassVar[frozenset[str]]
    #: True when this handler normally copies no image bytes: passing it over for a
    #: full copy is logged at WARNING with its reason.
    zero_copy: ClassVar[bool] = False
    #: This handler's options, in [image_handlers]. Registered and documented
    #: (``conf.list_opts``) for every installed handler, so a new handler touches no
    #: core module. An option several handlers read may be listed by each.
    opts: ClassVar[tuple[cfg.Opt, ...]] = ()

    def __init__(self, conf: cfg.ConfigOpts):
        self.conf = conf

    @classmethod
    def register_opts(cls, conf: cfg.ConfigOpts) -> None:
        """Register this handler's options (override to add other groups)."""
        conf.register_opts(list(cls.opts), group=GROUP)

    def serves(self, request: Request) -> None:
        """Raise Refused unless this handler serves the request's driver and target."""
        if request.zero_copy_only and not self.zero_copy:
            raise Refused(f'{self.name} copies the image, and only a zero-copy '
                          f'handler may make this disk')
        if (ANY_VIRT_DRIVER not in self.virt_drivers
                and request.virt_driver not in self.virt_drivers):
            raise Refused(
                f'{self.name} does not serve virt driver {request.virt_driver!r} '
                f'(serves {", ".join(sorted(self.virt_drivers))})')
        if request.target.kind not in self.target_kinds:
            raise Refused(
                f'{self.name} cannot produce a {request.target.kind} target '
                f'(produces {", ".join(sorted(self.target_kinds))})')

    def candidates(self, request: Request) -> list[Location]:
        """Locations this handler would consider (extra ones it brings, too)."""
        return [loc for loc in request.image.locations if loc.scheme in self.schemes]

    def resumes_from(self, request: Request) -> Callable[[Location], bool] | None:
        """Which candidates resume a partial copy of the target best (tried
        first among equals), or None (the default: no partials)."""
        return None

    @abc.abstractmethod
    def decide(self, request: Request, location: Location) -> Decision:
        """How this handler would serve ``request`` from ``location``; raise
        Refused(reason) when it cannot. Never changes state."""

    def prepare(self, request: Request, location: Location,
                decision: Decision) -> str | None:
        """Pre-cache: do now what the first disk would do once (verify a source,
        bring the image into this host's storage), making no disk. Returns what was
        done, or None when nothing needs doing ahead of a disk (the default)."""
        return None

    def leftovers(self, dry_run: bool = False) -> list:
        """What this handler's failed requests left outside the directories the
        copy partials are swept in (an RBD partial clone), as cleanup.Leftover, each
        removed unless still in use or ``dry_run``. None by default."""
        return []

    @abc.abstractmethod
    def act(self, request: Request, location: Location, decision: Decision) -> Provided:
        """Provide the image at the target; raise with a clear message on failure,
        leaving nothing at the target."""
