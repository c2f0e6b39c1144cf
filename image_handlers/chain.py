"""The handler chain: every enabled handler, in order, decides; the first yes acts.

``explain`` and ``fetch`` walk the same lazy plan (``_verdicts``), so the reasons an
operator reads are the ones that drove the run. A zero-copy handler that is skipped
or fails is logged at INFO/WARNING with its reason, never only at DEBUG.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence

from oslo_config import cfg
from oslo_log import log as logging
import stevedore

from image_handlers import conf as ih_conf
from image_handlers import exceptions
from image_handlers.glance import GlanceReader, ImageSource
from image_handlers.handlers.base import Decision, Handler, Refused, Request
from image_handlers.locations import Location
from image_handlers.ranking import RankedLocation, rank_locations
from image_handlers.results import ELIGIBLE, FAILED, SKIPPED, USED, Attempt, FetchResult
from image_handlers.targets import FileTarget, Target, parse_target
from image_handlers.throughput import ThroughputStore, blames_location
from image_handlers.trust.certificates import CertificateSource
from image_handlers.trust.expectation import expect
from image_handlers.trust.policy import TrustPolicy

LOG = logging.getLogger(__name__)

NAMESPACE = ih_conf.HANDLER_NAMESPACE
ALL_HANDLERS = '*'


def installed_handlers() -> list[str]:
    """Names of every handler installed on this host (entry points)."""
    return sorted(stevedore.ExtensionManager(NAMESPACE).names())


def installed_readers(scheme: str) -> list[str]:
    """Installed handlers (enabled or not) that read ``scheme`` locations."""
    manager = stevedore.ExtensionManager(NAMESPACE, invoke_on_load=False)
    return sorted(ext.name for ext in manager
                  if scheme in getattr(ext.plugin, 'schemes', ()))


def load_handlers(conf: cfg.ConfigOpts, names: list[str]) -> list[Handler]:
    """Instantiate the named handlers in the given order; unknown names are an error."""
    if not names:
        raise exceptions.ConfigError(
            'no handler enabled: set [image_handlers] handlers in nova.conf '
            '(for example "handlers = stream_copy")')
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise exceptions.ConfigError(
            f'handler(s) {", ".join(duplicates)} listed twice in [image_handlers]')

    def missing(names_missing):
        raise exceptions.ConfigError(
            f'handler(s) {", ".join(sorted(names_missing))} enabled in nova.conf '
            f'[image_handlers] but not installed; installed: '
            f'{", ".join(installed_handlers()) or "none"}')

    def failed(manager, entrypoint, exc):
        raise exceptions.ConfigError(
            f'handler {entrypoint.name} could not be loaded: {exc}')

    manager = stevedore.NamedExtensionManager(
        NAMESPACE, names=names, name_order=True, invoke_on_load=True,
        invoke_args=(conf,), on_missing_entrypoints_callback=missing,
        on_load_failure_callback=failed)
    return [ext.obj for ext in manager]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One (handler, location) pair's answer: a Decision, or None and the reason."""

    handler: Handler
    location: Location | None
    decision: Decision | None
    reason: str
    ranked: RankedLocation | None = None  # its rank, numbers and why

    @property
    def where(self) -> str | None:
        return self.location.display if self.location else None


class HandlerChain:
    def __init__(self, conf: cfg.ConfigOpts, virt_driver: str = 'libvirt',
                 glance: ImageSource | None = None,
                 handlers: list[Handler] | None = None, images_type: str | None = None):
        self.conf = conf
        self.virt_driver = virt_driver
        self.images_type = images_type      # Nova's [libvirt] images_type, if known
        self.handlers = handlers if handlers is not None else load_handlers(
            conf, ih_conf.handler_order(conf, virt_driver, images_type))
        self._glance = glance
        group = conf[ih_conf.GROUP]
        self.host = group.host
        self.throughput = ThroughputStore(group.state_dir,
                                          group.location_failure_half_life)
        self.use_throughput = group.prefer_measured_throughput

    @property
    def glance(self) -> ImageSource:
        """The default image source (nova.conf [glance]); built on first use."""
        if self._glance is None:
            self._glance = GlanceReader(self.conf)
        return self._glance

    def request(self, image_id: str, target: str | Target, purpose: str = 'spawn',
                size: int | None = None, source: ImageSource | None = None,
                zero_copy_only: bool = False,
                trusted_certs: Sequence[str] | None = None) -> Request:
        """Read the image (from ``source``, default ``self.glance``), check the
        target and decide what every path must prove of the bytes (Untrusted when
        no path could); ``source`` lets one chain serve requests with different
        credentials (inside Nova: each request context's own); ``trusted_certs``:
        the instance's trusted certificate ids."""
        if not image_id or not isinstance(image_id, str):
            raise exceptions.ImageNotFound(f'invalid image id {image_id!r}')
        tgt = parse_target(target) if isinstance(target, str) else target
        if isinstance(tgt, FileTarget):
            tgt.check_writable()
        glance = source or self.glance
        image = glance.get_image(image_id)
        policy = TrustPolicy.from_conf(self.conf, trusted_certs)
        certificates = CertificateSource(
            self.conf, getattr(glance, 'key_manager_context', None),
            policy.key_manager_timeout, policy.certificate_cache_seconds)
        return Request(image=image, target=tgt, virt_driver=self.virt_driver,
                       purpose=purpose, size=size, glance_endpoint=glance.endpoint,
                       glance_auth_headers=glance.auth_headers,
                       zero_copy_only=zero_copy_only,
                       expect=expect(image, policy, certificates), image_source=glance)

    # -- the plan -----------------------------------------------------------------

    def _verdicts(self, request: Request) -> Iterator[Verdict]:
        """Every (handler, location) verdict, lazily, in the order they are tried."""
        for handler in self.handlers:
            try:
                handler.serves(request)
                candidates = [loc for loc in handler.candidates(request) if loc.usable]
                if not candidates:
                    raise Refused(
                        f'no {"/".join(sorted(handler.schemes))} location among the '
                        f'image\'s {len(request.image.locations)} location(s)')
            except Refused as refused:
                yield Verdict(handler, None, None, str(refused))
                continue
            for ranked in rank_locations(candidates, self.host, self.throughput,
                                         use_throughput=self.use_throughput,
                                         resumes=handler.resumes_from(request)):
                try:
                    decision = handler.decide(request, ranked.location)
                except Refused as refused:
                    yield Verdict(handler, ranked.location, None, str(refused), ranked)
                    continue
                except exceptions.BadInput:
                    raise  # e.g. the target exists: no handler may touch it
                except exceptions.ImageHandlerError as exc:
                    yield Verdict(handler, ranked.location, None,
                                  f'could not decide: {exc}', ranked)
                    continue
                decision.plan.setdefault('rank', ranked.why)
                yield Verdict(handler, ranked.location, decision, decision.reason,
                              ranked)

    def _unusable(self, request: Request) -> list[Attempt]:
        """Locations no enabled handler will look at, each with the reason."""
        read = set().union(*(h.schemes for h in self.handlers))
        attempts = []
        for loc in request.image.locations:
            if not loc.usable:
                attempts.append(Attempt(ALL_HANDLERS, loc.display, SKIPPED, loc.problem))
            elif loc.scheme not in read:
                others = installed_readers(loc.scheme)
                hint = (f'installed handlers that read it: {", ".join(others)}'
                        if others else 'no installed handler reads it')
                attempts.append(Attempt(
                    ALL_HANDLERS, loc.display, SKIPPED,
                    f'no enabled handler reads {loc.scheme} locations ({hint})'))
        return attempts

    # -- explain and fetch ------------------------------------------------------------

    def explain(self, request: Request) -> FetchResult:
        """Dry run: every verdict, and which pair fetch would try first. Writes nothing."""
        result = FetchResult(image_id=request.image.id, target=request.target.display,
                             dry_run=True)
        result.attempts += self._unusable(request)
        for verdict in self._verdicts(request):
            outcome = ELIGIBLE if verdict.decision else SKIPPED
            result.attempts.append(Attempt(
                verdict.handler.name, verdict.where, outcome, verdict.reason,
                verdict.ranked.details() if verdict.ranked else {}))
            if verdict.decision and result.handler is None:
                result.handler, result.location = verdict.handler.name, verdict.where
                result.method = verdict.decision.method
                result.zero_copy = verdict.handler.zero_copy
        result.details['location_sources'] = request.image.location_sources
        return result

    def fetch(self, request: Request) -> FetchResult:
        """Provide the image at the target; raise NoHandlerAvailable with every reason."""
        start = time.monotonic()
        result = FetchResult(image_id=request.image.id, target=request.target.display)
        result.attempts += self._unusable(request)
        for verdict in self._verdicts(request):
            handler, location, where = verdict.handler, verdict.location, verdict.where
            ranked = verdict.ranked.details() if verdict.ranked else {}
            if verdict.decision is None:
                result.attempts.append(Attempt(handler.name, where, SKIPPED,
                                               verdict.reason, ranked))
                self._log_not_used(request, handler, where, verdict.reason)
                continue
            t0 = time.monotonic()
            try:
                provided = handler.act(request, location, verdict.decision)
            except exceptions.BadInput:
                raise  # the request itself is wrong: no other handler can fix it
            except Exception as exc:  # noqa: BLE001 - any failure moves to the next
                reason = f'{type(exc).__name__}: {exc}'
                result.attempts.append(Attempt(handler.name, where, FAILED, reason,
                                               ranked))
                LOG.warning('image %s: handler %s failed on %s, trying the next: %s',
                            request.image.id, handler.name, where, reason)
                if location is not None and blames_location(exc):
                    self.throughput.record_failure(location.endpoint_key)
                continue
            seconds = time.monotonic() - t0
            result.attempts.append(Attempt(handler.name, where, USED, verdict.reason,
                                           ranked))
            result.use(handler.name, where, provided)
            if location is not None:  # also halves the location's failure score
                self.throughput.record(location.endpoint_key,
                                       provided.bytes_copied, seconds)
            result.seconds = time.monotonic() - start
            self._log_used(request, result)
            return result
        result.seconds = time.monotonic() - start
        reasons = '; '.join(f'{a.handler}@{a.location or "-"}: {a.reason}'
                            for a in result.attempts)
        LOG.error('image %s: no handler could provide it for %s: %s',
                  request.image.id, request.target.display, reasons)
        raise exceptions.NoHandlerAvailable(
            f'no handler could provide image {request.image.id} for '
            f'{request.target.display}: {reasons}', result)

    def prepare(self, request: Request) -> FetchResult:
        """Pre-cache: do now, once, what the first disk of the image would do (verify
        a source, have it copied into this cluster), without making a disk. The
        handler fetch would use prepares; ``result.method`` says what it did, or
        'nothing' when the image is ready as it is. NoHandlerAvailable with every
        reason when no handler could serve the image here."""
        result = FetchResult(image_id=request.image.id, target=request.target.display)
        result.attempts += self._unusable(request)
        for verdict in self._verdicts(request):
            if verdict.decision is None:
                result.attempts.append(Attempt(verdict.handler.name, verdict.where,
                                               SKIPPED, verdict.reason))
                continue
            done = verdict.handler.prepare(request, verdict.location, verdict.decision)
            result.attempts.append(Attempt(verdict.handler.name, verdict.where, USED,
                                           verdict.reason))
            result.handler, result.location = verdict.handler.name, verdict.where
            result.method = done or 'nothing'
            LOG.info('image %s: ready for %s disks through %s from %s: %s',
                     request.image.id, request.target.kind, result.handler,
                     result.location, result.method)
            return result
        reasons = '; '.join(f'{a.handler}@{a.location or "-"}: {a.reason}'
                            for a in result.attempts)
        raise exceptions.NoHandlerAvailable(
            f'no handler could make image {request.image.id} ready for '
            f'{request.target.display}: {reasons}', result)

    def _log_not_used(self, request: Request, handler: Handler, where, reason) -> None:
        level = LOG.info if handler.zero_copy else LOG.debug
        level('image %s: %s not used for %s: %s', request.image.id, handler.name,
              where or 'any location', reason)

    def _log_used(self, request: Request, result: FetchResult) -> None:
        zero_copy_names = {h.name for h in self.handlers if h.zero_copy}
        passed_over = [a for a in result.attempts
                       if a.outcome in (SKIPPED, FAILED) and a.handler != result.handler
                       and a.handler in zero_copy_names]
        if not result.zero_copy and passed_over:
            LOG.warning('image %s provided by %s as a FULL COPY (%d bytes) because: %s',
                        request.image.id, result.handler, result.bytes_copied,
                        '; '.join(f'{a.handler}: {a.reason}' for a in passed_over))
        else:
            LOG.info('image %s provided by %s (%s) from %s: %d bytes copied, %s disk%s',
                     request.image.id, result.handler, result.method, result.location,
                     result.bytes_copied, result.disk_format,
                     f', depends on {result.depends_on.source} until '
                     f'{result.depends_on.until}' if result.depends_on else '')
