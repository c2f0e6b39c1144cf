"""``rbd_clone``: a copy-on-write clone of the image's protected snapshot.

O(1) whatever the image size (tens of milliseconds) when image and instance disks
share a Ceph cluster. A location is a claim (OSSN-0065/0090: Glance accepts forged
fsids, other pools and other images' names), so ``decide`` checks every part of it
against the configuration and the image record before anything is cloned:
fsid, source pool, image name (= Glance image id, as glance_store names it),
snapshot exists and is protected, size, disk_format, clone depth, target pool and
target name.
"""
from __future__ import annotations

import contextlib

from oslo_config import cfg
from oslo_log import log as logging

from image_handlers import conf as ih_conf
from image_handlers import exceptions
from image_handlers.handlers.base import Decision, Handler, Provided, Request
from image_handlers.locations import Location, RbdLocation
from image_handlers.rbd import claims
from image_handlers.rbd import cluster as rbd_cluster
from image_handlers.targets import RBD, RbdTarget

LOG = logging.getLogger(__name__)

RAW_FORMATS = ('raw',)


class RbdCloneHandler(Handler):
    name = 'rbd_clone'
    target_kinds = frozenset({RBD})
    schemes = frozenset({'rbd'})
    zero_copy = True

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

    # -- decide ---------------------------------------------------------------------

    def decide(self, request: Request, location: Location) -> Decision:
        assert isinstance(location, RbdLocation)
        target: RbdTarget = request.target  # serves() guarantees the kind
        image = request.image
        if not image.has_data:
            return Decision.refuse(f'image status is {image.status!r}, not active')
        if (image.disk_format or '').lower() not in RAW_FORMATS:
            return Decision.refuse(
                f'disk_format {image.disk_format} cannot be cloned as raw (a clone '
                f'shares the image\'s bytes, which are not a raw disk)')
        try:
            claims.check_names(location, image, self.source_pools)
        except claims.Refused as refused:
            return Decision.refuse(str(refused))
        if target.pool not in self.target_pools:
            return Decision.refuse(
                f'rbd: target pool {target.pool!r} is not allowed (allowed: '
                f'{", ".join(sorted(self.target_pools))})')
        try:
            cluster = rbd_cluster.get_cluster(self.settings)
        except rbd_cluster.ClusterUnavailable as exc:
            return Decision.refuse(f'rbd: {exc}')
        if location.fsid != cluster.fsid:
            return Decision.refuse(
                f'rbd: fsid {location.fsid} is not this cluster\'s fsid {cluster.fsid} '
                f'({self.settings.ceph_conf})')
        try:
            snap = claims.inspect_snapshot(cluster, location, image,
                                           max_ancestors=self.max_depth)
        except claims.Refused as refused:
            return Decision.refuse(str(refused))
        where = f'{location.pool}/{location.image}@{location.snapshot}'
        if not snap.protected:
            return Decision.refuse(
                f'rbd: snapshot {where} is not protected, so it could change under '
                f'the clone')
        depth = 1 + snap.ancestors
        if depth > self.max_depth:
            return Decision.refuse(
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
        return Decision.accept(
            f'copy-on-write clone of {where} ({snap.size} bytes, depth {depth}) into '
            f'{target.display}' + (' then flatten' if flatten else ''),
            zero_copy=True, flatten=flatten, snap_size=snap.size, depth=depth)

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
        rbd = rbd_cluster.rbd
        target: RbdTarget = request.target
        cluster = rbd_cluster.get_cluster(self.settings)
        plan = decision.plan
        with cluster.ioctx(location.pool) as p_ioctx, \
                cluster.ioctx(target.pool) as c_ioctx:
            try:
                rbd.RBD().clone(p_ioctx, location.image, location.snapshot,
                                c_ioctx, target.name)
            except rbd.ImageExists:
                raise exceptions.TargetExists(
                    f'target {target.display} appeared before the clone; left as it is')
            except rbd.ImageNotFound as exc:
                raise exceptions.SourceError(
                    f'rbd: {location.display} vanished before the clone (image deleted '
                    f'since the decision?): {exc}')
            grow = request.size is not None and request.size > plan['snap_size']
            try:
                if grow or plan['flatten']:  # opening the clone costs ~6 ms: only then
                    with contextlib.closing(rbd.Image(c_ioctx, target.name)) as clone:
                        if grow:
                            clone.resize(request.size)
                        if plan['flatten']:
                            clone.flatten()
            except BaseException:
                LOG.warning('removing the clone %s after a failure', target.display)
                rbd.RBD().remove(c_ioctx, target.name)  # we created it: ours to remove
                raise
        return Provided(zero_copy=True, bytes_transferred=0,
                        details={'parent': f'{location.pool}/{location.image}@'
                                           f'{location.snapshot}',
                                 'fsid': cluster.fsid, 'flattened': plan['flatten'],
                                 'clone_depth': plan['depth']})
