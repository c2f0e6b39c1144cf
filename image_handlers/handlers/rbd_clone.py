"""``rbd_clone``: a copy-on-write clone of the image's protected snapshot.

O(1) whatever the image size (tens of milliseconds) when image and instance disks
share a Ceph cluster. A location is a claim (OSSN-0065/0090: Glance accepts forged
fsids, other pools and other images' names), so ``decide`` checks every part of it
against the configuration and the image record before anything is cloned:
fsid, source pool, image name (= Glance image id, as glance_store names it),
snapshot exists and is protected, size, disk_format, clone depth, target pool and
target name.

A signed image, on a host that checks signatures, is cloned only from a snapshot
whose bytes were proven to carry the signature: read once at hash speed (through
librbd, holes as zeros), the verdict recorded by the snapshot's RBD ids, so later
clones stay O(1) and a snapshot made again under the same name is read again.
``rbd_verify_snapshots`` does the same for the recorded hash of every image.
"""
from __future__ import annotations

import contextlib
import errno
import os
import time

from oslo_config import cfg
from oslo_log import log as logging

from image_handlers import conf as ih_conf
from image_handlers import exceptions
from image_handlers.copy import locking
from image_handlers.copy.cancel import CancelToken
from image_handlers.handlers.base import Decision, Handler, Refused, Request
from image_handlers.locations import Location, RbdLocation
from image_handlers.rbd import claims
from image_handlers.rbd import cluster as rbd_cluster
from image_handlers.rbd import options as rbd_options
from image_handlers.rbd import partials as rbd_partials
from image_handlers.results import RAW, RBD_PARENT, Dependency, Provided
from image_handlers.targets import RBD, RbdTarget
from image_handlers.trust.digest import DigestPass, feed_stream
from image_handlers.trust.verdicts import SourceVerdicts

LOG = logging.getLogger(__name__)

RAW_FORMATS = ('raw',)
VERIFY_BUFFER = 8 << 20
PARTIAL_SUFFIX = rbd_partials.SUFFIX
STALE_WATCH_GRACE = 35.0    # Ceph's osd_client_watch_timeout (30 s), and a margin


def _timed_out(exc: BaseException) -> bool:
    return abs(getattr(exc, 'errno', None) or 0) == errno.ETIMEDOUT


def partial_name(name: str) -> str:
    """Where a clone is made before it is published under ``name``."""
    return name + PARTIAL_SUFFIX

clone_opts = (
    cfg.StrOpt('rbd_target_pool',
               help='Pool that instance disks are cloned into. Default: [libvirt] '
                    'images_rbd_pool.'),
    cfg.ListOpt('rbd_allowed_target_pools', default=[],
                help='Pools a clone may be created in; empty means only '
                     'rbd_target_pool.'),
    cfg.IntOpt('rbd_max_clone_depth', default=3, min=1,
               help='Longest parent chain a new clone may have (the clone counts). '
                    'Deep chains slow every read that falls through to a parent.'),
    cfg.BoolOpt('rbd_flatten', default=False,
                help='Flatten every clone (copies all data in the cluster; the disk '
                     'no longer depends on the image).'),
    cfg.BoolOpt('rbd_verify_snapshots', default=False,
                help='Verify the recorded hash of every image snapshot before its '
                     'first clone on this host (read once at hash speed, the '
                     'verdict kept in state_dir; later clones stay O(1)). Off by '
                     'default: a protected snapshot cannot change, the location '
                     'claims prove it is the image\'s own, and Glance hashed it on '
                     'upload. Signed images are verified whatever this says, when '
                     'signatures are checked ([glance] verify_glance_signatures).'),
    cfg.ListOpt('rbd_flatten_purposes',
                default=['unshelve', 'cross_cell_move', 'live_migration'],
                help='Request purposes for which a clone is flattened, so that a '
                     'moved or restored disk does not depend on the image.'),
)


class RbdCloneHandler(Handler):
    name = 'rbd_clone'
    target_kinds = frozenset({RBD})
    schemes = frozenset({'rbd'})
    zero_copy = True
    opts = rbd_options.cluster_opts + clone_opts

    @classmethod
    def register_opts(cls, conf: cfg.ConfigOpts) -> None:
        rbd_options.register(conf, cls.opts)

    def __init__(self, conf: cfg.ConfigOpts):
        super().__init__(conf)
        group = conf[ih_conf.GROUP]
        self.settings = rbd_cluster.ClusterSettings.from_conf(conf)
        self.target_pool = group.rbd_target_pool or conf.libvirt.images_rbd_pool
        self.source_pools = set(group.rbd_allowed_source_pools)
        self.target_pools = set(group.rbd_allowed_target_pools) or {self.target_pool}
        self.max_depth = group.rbd_max_clone_depth
        self.flatten_always = group.rbd_flatten
        self.flatten_purposes = set(group.rbd_flatten_purposes)
        self.verify_snapshots = group.rbd_verify_snapshots
        self.verdicts = SourceVerdicts(group.state_dir, 'rbd-verdicts')

    # -- decide ---------------------------------------------------------------------

    def decide(self, request: Request, location: Location) -> Decision:
        assert isinstance(location, RbdLocation)
        target: RbdTarget = request.target  # serves() guarantees the kind
        image = request.image
        if not image.has_data:
            raise Refused(f'image status is {image.status!r}, not active')
        if (image.disk_format or '').lower() not in RAW_FORMATS:
            raise Refused(
                f'disk_format {image.disk_format} cannot be cloned as raw (a clone '
                f'shares the image\'s bytes, which are not a raw disk)')
        claims.check_names(location, image, self.source_pools)
        cluster = self.check_target(target)
        if location.fsid != cluster.fsid:
            raise Refused(
                f'rbd: fsid {location.fsid} is not this cluster\'s fsid {cluster.fsid} '
                f'({self.settings.ceph_conf})')
        snap = claims.inspect_snapshot(cluster, location, image,
                                       max_ancestors=self.max_depth)
        where = f'{location.pool}/{location.image}@{location.snapshot}'
        if not snap.protected:
            raise Refused(
                f'rbd: snapshot {where} is not protected, so it could change under '
                f'the clone')
        depth = 1 + snap.ancestors
        if depth > self.max_depth:
            raise Refused(
                f'rbd: the clone would be {depth} levels deep (limit {self.max_depth}; '
                f'[image_handlers] rbd_max_clone_depth)')
        if request.size is not None and request.size < snap.size:
            raise exceptions.InvalidTarget(
                f'requested disk size {request.size} is smaller than image {image.id} '
                f'({snap.size} bytes)')
        if self._exists(cluster, target):
            raise exceptions.TargetExists(
                f'target {target.display} already exists; image_handlers never '
                f'overwrites a disk: remove it yourself or choose another name')
        flatten = (self.flatten_always or request.purpose in self.flatten_purposes)
        verify, check = self._verification(request, snap)
        return Decision(
            f'copy-on-write clone of {where} ({snap.size} bytes, depth {depth}) into '
            f'{target.display}' + (' then flatten' if flatten else '') + check,
            method='clone+flatten' if flatten else 'clone',
            plan={'flatten': flatten, 'snap_size': snap.size, 'depth': depth,
                  'verify': verify, 'identity': snap.identity})

    def check_target(self, target: RbdTarget) -> rbd_cluster.Cluster:
        """The target pool is allowed; this host's cluster (connected)."""
        if target.pool not in self.target_pools:
            raise Refused(
                f'rbd: target pool {target.pool!r} is not allowed (allowed: '
                f'{", ".join(sorted(self.target_pools))})')
        try:
            return rbd_cluster.get_cluster(self.settings)
        except rbd_cluster.ClusterUnavailable as exc:
            raise Refused(f'rbd: {exc}') from exc

    def _verification(self, request: Request,
                      snap: claims.SnapshotInfo) -> tuple[bool, str]:
        """(read the snapshot first?, what explain says about it)."""
        expect = request.expect
        if expect.signature is None and not self.verify_snapshots:
            return False, ''
        if expect.signature is None:
            expect.require_checksum()
            if expect.checksum is None:     # allowed unverified: nothing to prove
                return False, '; NOT verified (no recorded hash)'
        bad = self.verdicts.refused(request.image.id, snap.identity)
        if bad:
            raise Refused(f'rbd: {bad}')
        if self.verdicts.verified(request.image.id, expect.key, snap.identity):
            return False, f'; {expect.describe()} verified before (verdict reused)'
        return True, (f'; the snapshot is read once first to verify its '
                      f'{expect.describe()} ({snap.size} bytes)')

    @staticmethod
    def _exists(cluster: rbd_cluster.Cluster, target: RbdTarget) -> bool:
        rbd = rbd_cluster.rbd
        with cluster.ioctx(target.pool) as ioctx:
            try:
                rbd.Image(ioctx, target.name, read_only=True).close()
            except rbd.ImageNotFound:
                return False
            except rbd.Error as exc:
                raise exceptions.SourceError(
                    f'rbd: could not tell whether {target.display} exists: {exc}')
        return True

    # -- act ------------------------------------------------------------------------

    def act(self, request: Request, location: Location, decision: Decision) -> Provided:
        target: RbdTarget = request.target
        cluster = rbd_cluster.get_cluster(self.settings)
        plan = decision.plan
        if plan['verify']:
            self._verify_snapshot(request, location, cluster, plan['identity'])
        lock = locking.lock_path(os.path.join(self.conf[ih_conf.GROUP].state_dir,
                                              'locks'),
                                 f'rbd-{target.pool}-{target.name}')
        with locking.image_lock(lock, CancelToken(), f'clone into {target.display}',
                                remove=True), \
                cluster.ioctx(location.pool) as p_ioctx, \
                cluster.ioctx(target.pool) as c_ioctx:
            self._clone(request, location, plan, c_ioctx, p_ioctx, cluster)
        parent = f'{location.pool}/{location.image}@{location.snapshot}'
        depends = None if plan['flatten'] else Dependency(
            RBD_PARENT, f'{parent} (cluster {cluster.fsid})',
            pin=f'protected snapshot {parent}: Ceph refuses to unprotect or delete '
                f'it while this clone exists',
            until=f'rbd flatten {target.pool}/{target.name}')
        # A flatten copies every allocated byte inside the cluster: say so.
        return Provided(method=decision.method,
                        bytes_copied=plan['snap_size'] if plan['flatten'] else 0,
                        disk_format=RAW, depends_on=depends,
                        verified=self._verified(request, plan),
                        details={'parent': parent, 'fsid': cluster.fsid,
                                 'flattened': plan['flatten'],
                                 'clone_depth': plan['depth']})

    def _clone(self, request: Request, location: RbdLocation, plan: dict,
               c_ioctx, p_ioctx, cluster: rbd_cluster.Cluster) -> None:
        """Clone (resize, flatten) under a partial name, then publish it by rename:
        an OSD or monitor lost half way leaves no disk at the target's name, only
        the partial, which this (or the next) request for the target removes."""
        rbd = rbd_cluster.rbd
        target: RbdTarget = request.target
        partial = partial_name(target.name)
        where = f'{target.pool}/{partial}'
        step = 'removing an earlier partial clone'
        try:
            self._remove_stale(c_ioctx, where, partial)
            step = 'clone'
            try:
                rbd.RBD().clone(p_ioctx, location.image, location.snapshot,
                                c_ioctx, partial)
            except rbd.ImageNotFound as exc:
                raise exceptions.SourceError(
                    f'rbd: {location.display} vanished before the clone (image '
                    f'deleted since the decision?): {exc}') from exc
            grow = request.size is not None and request.size > plan['snap_size']
            if grow or plan['flatten']:  # opening the clone costs ~6 ms: only then
                step = 'flatten' if plan['flatten'] else 'resize'
                with contextlib.closing(rbd.Image(c_ioctx, partial)) as clone:
                    if grow:
                        clone.resize(request.size)
                    if plan['flatten']:
                        clone.flatten()
            step = 'publishing (rename)'
            try:
                rbd.RBD().rename(c_ioctx, partial, target.name)
            except rbd.ImageExists:
                self._discard(c_ioctx, where, partial)
                raise exceptions.TargetExists(
                    f'target {target.display} appeared before the clone was '
                    f'published; left as it is') from None
        except rbd.Error as exc:
            if _timed_out(exc):
                # The cluster did not answer: removing now would wait as long
                # again (measured: 15 s more), for nothing. The next request for
                # this disk (a retry, or Nova's reschedule: same name) removes it.
                LOG.warning('partial clone %s (if made) left for the next request '
                            'for %s to remove: the cluster did not answer', where,
                            target.display)
                left = (f'the cluster did not answer, so the partial clone {where} '
                        f'(if made) is left for the next request for this disk to '
                        f'remove')
            else:
                left = self._discard(c_ioctx, where, partial)
            raise exceptions.SourceError(
                f'rbd: {step} for {target.display} failed in Ceph cluster '
                f'{cluster.fsid} ({self.settings.describe()}): {exc}; no disk was '
                f'published; {left}. Check the cluster (ceph -s: OSDs and monitors '
                f'up?) and retry the request') from exc

    @staticmethod
    def _remove_stale(c_ioctx, where: str, partial: str) -> None:
        """Remove the partial clone a failed request left (ours by its name). A
        client that lost the cluster while it had the partial open still watches
        it until Ceph's watch timeout (osd_client_watch_timeout, 30 s): wait that
        long for it, not for ever."""
        rbd = rbd_cluster.rbd
        deadline = time.monotonic() + STALE_WATCH_GRACE
        while True:
            try:
                rbd.RBD().remove(c_ioctx, partial)
            except rbd.ImageNotFound:
                return
            except rbd.ImageBusy:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
                continue
            LOG.info('removed the partial clone %s an earlier request left', where)
            return

    def _discard(self, c_ioctx, where: str, partial: str) -> str:
        """Remove our partial clone; what happened, for the error message."""
        rbd = rbd_cluster.rbd
        try:
            rbd.RBD().remove(c_ioctx, partial)
        except rbd.ImageNotFound:
            return 'nothing was left'
        except rbd.Error as exc:
            LOG.warning('could not remove the partial clone %s: %s', where, exc)
            return (f'the partial clone {where} could not be removed ({exc}): the next '
                    f'request for this disk removes it')
        return f'the partial clone {where} was removed'

    def leftovers(self, dry_run: bool = False) -> list:
        """Partial clones failed requests left in the target pools (rbd/partials)."""
        try:
            cluster = rbd_cluster.get_cluster(self.settings)
        except rbd_cluster.ClusterUnavailable as exc:
            raise exceptions.SourceError(f'rbd_clone: {exc}') from exc
        return rbd_partials.sweep(cluster, self.target_pools, dry_run)

    def prepare(self, request: Request, location: Location,
                decision: Decision) -> str | None:
        """Pre-cache: the clone itself is O(1); what the first one would pay is
        reading the snapshot to verify it, so that is done now."""
        if not decision.plan['verify']:
            return None
        cluster = rbd_cluster.get_cluster(self.settings)
        self._verify_snapshot(request, location, cluster, decision.plan['identity'])
        return (f'snapshot {location.pool}/{location.image}@{location.snapshot} '
                f'verified ({request.expect.describe()})')

    def _verified(self, request: Request, plan: dict) -> str | None:
        expect = request.expect
        if self.verdicts.verified(request.image.id, expect.key, plan['identity']):
            return (f'{expect.describe()} (snapshot '
                    f'{"read now" if plan["verify"] else "verified before"})')
        return None

    def _verify_snapshot(self, request: Request, location: RbdLocation,
                         cluster: rbd_cluster.Cluster, identity: str) -> None:
        """Verify under a lock per image: requests that arrive together for a new
        image read its snapshot once (bench/soak.py measured 2-3 reads by the OSD
        for 16 at once without it); the others wait and take its verdict."""
        image = request.image
        lock = locking.lock_path(os.path.join(self.conf[ih_conf.GROUP].state_dir,
                                              'locks'), f'rbd-verify-{image.id}')
        with locking.image_lock(lock, CancelToken(),
                                f'verification of {location.display}', remove=True):
            bad = self.verdicts.refused(image.id, identity)
            if bad:
                raise exceptions.ChecksumMismatch(f'rbd: {bad}')
            if self.verdicts.verified(image.id, request.expect.key, identity):
                return
            self._read_and_verify(request, location, cluster, identity)

    def _read_and_verify(self, request: Request, location: RbdLocation,
                         cluster: rbd_cluster.Cluster, identity: str) -> None:
        """Read the snapshot once, hash and signature in one pass; record the
        verdict either way (a bad snapshot is refused from then on)."""
        from image_handlers.copy.cancel import CancelToken
        from image_handlers.copy.rbd_source import RbdSource
        image = request.image
        digests = DigestPass(request.expect)
        source = RbdSource(cluster, location.pool, location.image, location.snapshot)
        # librbd reads, the hash and the signature's digest overlapped.
        read = feed_stream(source.open(0), digests, CancelToken(),
                           f'verification of {location.display}', VERIFY_BUFFER)
        where = f'snapshot {location.pool}/{location.image}@{location.snapshot}'
        try:
            proven = digests.finish(where)
        except exceptions.ChecksumMismatch as exc:
            self.verdicts.record(image.id, request.expect.key, identity, str(exc))
            raise
        self.verdicts.record(image.id, request.expect.key, identity)
        LOG.info('image %s: %s read once (%d bytes, %d read from the cluster): %s',
                 image.id, where, read, source.bytes_read, proven)
