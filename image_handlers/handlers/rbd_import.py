"""``rbd_import``: Glance copies the image into this host's RBD store once, then clone.

When rbd_clone refuses because the image lives in another Ceph cluster, or only in
a file/http store, every boot would otherwise download it. This handler does what
Nova's ``[libvirt] images_rbd_glance_store_name`` does, with the checks of any
location: it asks Glance to copy the image into the Glance store backed by this
host's cluster (image import method ``copy-image``), waits for it with a bound,
checks the NEW location's claims exactly as rbd_clone checks any location (fsid,
pool, name, protected snapshot, size; rbd_clone's own ``decide``), and clones it.

One copy per image per cluster, however many hosts ask at once: Glance holds one
import lock per image, so while a copy runs every other ``copy-image`` request is
answered 409 "Image has active task" (or, when two requests race for the lock,
409 "... prior operation is still in progress"; measured, Glance 33); a host that
gets either, or sees the store in ``os_glance_importing_to_stores``, waits for that
copy instead of starting one, and a host that asks after it finished gets 400
"already present". (Once, in CI, two calls racing for the lock were both accepted:
the lock is Glance's, and Glance then copies twice; each host still checks and
clones what it finds.)
Later boots find the image in this cluster and rbd_clone serves them (O(1)); this
handler then refuses, saying so.

Bytes: this host copies none (``bytes_copied`` 0: the disk is an O(1) clone), but the
first boot per cluster makes Glance copy the whole image; ``zero_copy`` is False so
that explain never calls that path free, and a fetch reports what Glance copied in
``details`` (``glance_copied_bytes``, 0 when the copy had already been made).

``decide`` changes nothing (explain may call it): it checks the image (active, raw,
no location in this cluster yet), Glance's store list and import methods, and the
target as rbd_clone does. Only ``act`` asks Glance to copy.
"""
from __future__ import annotations

import dataclasses
import time

from oslo_config import cfg
from oslo_log import log as logging

from image_handlers import conf as ih_conf
from image_handlers import exceptions
from image_handlers import glance_import
from image_handlers.handlers.base import Decision, Handler, Refused, Request
from image_handlers.handlers.rbd_clone import RAW_FORMATS, RbdCloneHandler
from image_handlers.image import ImageInfo
from image_handlers.locations import Location, RbdLocation
from image_handlers.rbd import options as rbd_options
from image_handlers.results import Provided
from image_handlers.targets import RBD, RbdTarget

LOG = logging.getLogger(__name__)

import_opts = (
    cfg.StrOpt('rbd_glance_store_name', default='',
               help='rbd_import: the Glance store (an id in [DEFAULT] '
                    'enabled_backends of glance-api.conf) backed by this host\'s Ceph '
                    'cluster ([image_handlers] rbd_ceph_conf). An image that is not '
                    'in this cluster is copied there by Glance (copy-image) once, '
                    'then cloned. Empty: rbd_import is off.'),
    cfg.IntOpt('rbd_copy_timeout', default=600, min=1,
               help='rbd_import: longest wait, in seconds, for Glance to copy an '
                    'image into rbd_glance_store_name (someone else\'s copy '
                    'included). The copy goes on in Glance after a timeout.'),
    cfg.FloatOpt('rbd_copy_poll_interval', default=2.0, min=0.05,
                 help='rbd_import: seconds between reads of the image record while '
                      'Glance copies it.'),
)


class RbdImportHandler(Handler):
    name = 'rbd_import'
    target_kinds = frozenset({RBD})
    # Glance copies from whichever of its stores holds the image: any location says
    # where the data is now; this handler does not read it.
    schemes = frozenset({'rbd', 'file', 'http', 'https', 'cinder', 'iscsi'})
    zero_copy = False
    opts = RbdCloneHandler.opts + import_opts

    @classmethod
    def register_opts(cls, conf: cfg.ConfigOpts) -> None:
        rbd_options.register(conf, cls.opts)

    def __init__(self, conf: cfg.ConfigOpts):
        super().__init__(conf)
        group = conf[ih_conf.GROUP]
        self.store = (group.rbd_glance_store_name or '').strip()
        self.timeout = group.rbd_copy_timeout
        self.interval = group.rbd_copy_poll_interval
        self.clone = RbdCloneHandler(conf)    # target checks, claims, the clone

    def candidates(self, request: Request) -> list[Location]:
        """One: Glance picks the source itself; the first location stands for it."""
        found = super().candidates(request)
        usable = [loc for loc in found if loc.usable]
        return usable[:1] or found[:1]

    # -- decide ---------------------------------------------------------------------

    def decide(self, request: Request, location: Location) -> Decision:
        if not self.store:
            raise Refused('rbd_import is off: [image_handlers] rbd_glance_store_name '
                          'names no Glance store')
        target: RbdTarget = request.target
        image = request.image
        if not image.has_data:
            raise Refused(f'image status is {image.status!r}, not active: Glance '
                          f'copies only active images')
        if (image.disk_format or '').lower() not in RAW_FORMATS:
            raise Refused(
                f'disk_format {image.disk_format} cannot be cloned as raw, so a copy '
                f'in this cluster would not help')
        cluster = self.clone.check_target(target)
        here = self._local_locations(image, cluster.fsid)
        if here:
            raise Refused(
                f'the image already has a location in this cluster ({here[0].display}'
                f'): rbd_clone serves it (if rbd_clone refused it, its reason says '
                f'why; Glance keeps one copy per store)')
        in_stores = glance_import.store_list(image.properties.get('stores'))
        if self.store in in_stores:
            raise Refused(
                f'Glance says store {self.store!r} holds the image, but none of its '
                f'locations is in this cluster {cluster.fsid}: is [image_handlers] '
                f'rbd_glance_store_name the store of this cluster, and does Glance '
                f'show locations (show_multiple_locations or the locations API)?')
        source = request.image_source
        if source is None or not hasattr(source, 'copy_to_store'):
            raise Refused('rbd_import: this image source cannot ask Glance to copy '
                          'an image')
        self._check_glance(source)
        if self.clone._exists(cluster, target):
            raise exceptions.TargetExists(
                f'target {target.display} already exists; image_handlers never '
                f'overwrites a disk: remove it yourself or choose another name')
        importing = self.store in glance_import.store_list(
            image.properties.get('os_glance_importing_to_stores'))
        where = f'store {self.store!r} (cluster {cluster.fsid})'
        return Decision(
            (f'Glance is copying it into {where} now: would wait for that copy'
             if importing else f'Glance would copy it into {where}')
            + f' (up to {self.timeout} s), check the new location\'s claims, then '
              f'clone it into {target.display}; this host copies no bytes, Glance '
              f'copies {image.size} once for this cluster',
            method='copy-image+clone',
            plan={'fsid': cluster.fsid, 'importing': importing})

    def _check_glance(self, source) -> None:
        """The store exists and copy-image is enabled (when the source can say)."""
        info = getattr(source, 'glance_info', None)
        if info is None:
            return
        try:
            answers = info()
        except Exception as exc:  # noqa: BLE001 - any client's error: say it, refuse
            raise Refused(f'rbd_import: cannot read Glance\'s stores: {exc}') from exc
        stores = glance_import.store_ids(answers.get('stores'))
        if self.store not in stores:
            raise Refused(
                f'Glance has no store {self.store!r} (its stores: '
                f'{", ".join(sorted(map(str, stores))) or "none"}); set [image_handlers]'
                f' rbd_glance_store_name to the store of this host\'s cluster')
        if str(stores[self.store].get('read-only', '')).lower() == 'true':
            raise Refused(f'Glance store {self.store!r} is read-only')
        methods = glance_import.import_methods(answers.get('import'))
        if methods is not None and glance_import.COPY_METHOD not in methods:
            raise Refused(
                f'Glance does not offer the copy-image import method (enabled: '
                f'{", ".join(methods) or "none"}; glance-api.conf [DEFAULT] '
                f'enabled_import_methods)')

    @staticmethod
    def _local_locations(image: ImageInfo, fsid: str) -> list[RbdLocation]:
        return [loc for loc in image.locations
                if isinstance(loc, RbdLocation) and loc.usable and loc.fsid == fsid]

    # -- act ------------------------------------------------------------------------

    def act(self, request: Request, location: Location, decision: Decision) -> Provided:
        fresh, new_location, clone_decision, facts = self._copied(request, decision)
        provided = self.clone.act(fresh, new_location, clone_decision)
        provided.method = 'copy-image+' + provided.method
        provided.details.update(facts)
        return provided

    def prepare(self, request: Request, location: Location,
                decision: Decision) -> str | None:
        """Pre-cache: have Glance copy the image into this cluster now (and the new
        location checked, its snapshot verified when rbd_clone would), no disk."""
        fresh, new_location, clone_decision, facts = self._copied(request, decision)
        verified = self.clone.prepare(fresh, new_location, clone_decision)
        return (f'copied by Glance into store {self.store!r} as {new_location.display} '
                f'({facts["copy_wait_seconds"]} s)' + (f'; {verified}' if verified
                                                       else ''))

    def _copied(self, request: Request, decision: Decision):
        """Wait for (or start) Glance's copy; the fresh request, the new location,
        rbd_clone's decision on it (its claims checked) and what happened."""
        source, image_id = request.image_source, request.image.id
        fsid = decision.plan['fsid']
        t0 = time.monotonic()
        image, asked, waited = self._wait_for_copy(source, image_id, fsid)
        seconds = time.monotonic() - t0
        here = self._local_locations(image, fsid)
        ours = [loc for loc in here if loc.metadata.get('store') == self.store]
        new_location = (ours or here)[0]
        fresh = dataclasses.replace(request, image=image)
        try:
            clone_decision = self.clone.decide(fresh, new_location)
        except Refused as refused:
            raise exceptions.SourceError(
                f'Glance copied image {image_id} into store {self.store!r}, but its '
                f'new location {new_location.display} fails its claims: {refused}. '
                f'Nothing was cloned; fix the store\'s pool or the handler options '
                f'(rbd_allowed_source_pools), or remove that location') from refused
        LOG.info('image %s: in store %s after %.1f s (%s): %s', image_id, self.store,
                 seconds, 'copy asked here' if asked else 'another copy waited for'
                 if waited else 'already there', new_location.display)
        facts = {
            'glance_store': self.store,
            'copy_asked_by_this_host': asked,
            'waited_for_another_copy': waited,
            'copy_wait_seconds': round(seconds, 3),
            # Bytes Glance wrote into this cluster for this request (0 when the copy
            # already existed); not copied by this host.
            'glance_copied_bytes': (image.size or 0) if (asked or waited) else 0,
            'location': new_location.display,
        }
        return fresh, new_location, clone_decision, facts

    def _wait_for_copy(self, source, image_id: str,
                       fsid: str) -> tuple[ImageInfo, bool, bool]:
        """Until a location of the image is in this cluster: (record, copy asked by
        us, waited for someone else's). Glance's per-image import lock makes one
        copy at a time: a busy answer means another import runs, so wait and ask
        again once it is over (it may have been to another store)."""
        deadline = time.monotonic() + self.timeout
        asked = waited = False
        armed = True        # a failure listed for our store is news (see below)
        while True:
            image = source.get_image(image_id)
            props = image.properties
            importing = self.store in glance_import.store_list(
                props.get('os_glance_importing_to_stores'))
            failed = self.store in glance_import.store_list(
                props.get('os_glance_failed_import'))
            if importing:
                armed = True
                waited = waited or not asked     # someone else's copy
            elif (self.store in glance_import.store_list(props.get('stores'))
                  and self._local_locations(image, fsid)):
                return image, asked, waited
            elif failed and armed:
                whose = 'our' if asked else 'another host\'s'
                raise exceptions.SourceError(
                    f'Glance failed to copy image {image_id} into store '
                    f'{self.store!r} (os_glance_failed_import; '
                    f'{whose} copy-image): see '
                    f'Glance\'s log for the task; the next boot asks again')
            elif self.store in glance_import.store_list(props.get('stores')):
                raise exceptions.SourceError(
                    f'Glance lists store {self.store!r} for image {image_id} but no '
                    f'location of it is in this cluster {fsid}: the store is not '
                    f'this cluster\'s, or Glance hides its locations')
            elif not image.has_data:
                raise exceptions.SourceError(
                    f'image {image_id} is {image.status!r} now, not active: Glance '
                    f'will not copy it')
            elif not asked:
                outcome = source.copy_to_store(image_id, self.store)
                LOG.info('image %s: copy-image to store %s: %s', image_id,
                         self.store, outcome)
                if outcome == glance_import.STARTED:
                    asked = True
                    # A failure left by an earlier copy stays listed until Glance's
                    # task starts and clears it: only a new one counts.
                    armed = not failed
                    continue
                if outcome == glance_import.BUSY:
                    waited = True
                # PRESENT: done meanwhile; the next read shows the location.
            if time.monotonic() >= deadline:
                raise exceptions.SourceError(
                    f'Glance did not copy image {image_id} into store {self.store!r} '
                    f'within {self.timeout} s ([image_handlers] rbd_copy_timeout; '
                    f'{"asked by this host" if asked else "another import was running"}'
                    f'); the copy may go on in Glance: a later boot clones it')
            time.sleep(max(0.0, min(self.interval, deadline - time.monotonic())))
