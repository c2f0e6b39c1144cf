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
        if location.pool not in self.source_pools:
            return Decision.refuse(
                f'rbd: pool {location.pool!r} is not an allowed source pool (allowed: '
                f'{", ".join(sorted(self.source_pools))}; [image_handlers] '
                f'rbd_allowed_source_pools)')
        if location.image != image.id:
            return Decision.refuse(
                f'rbd: location names RBD image {location.image!r}, but Glance stores '
                f'image {image.id} under its own id: refusing a location that points '
                f'at other data')
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
            return self._decide_in_cluster(request, location, cluster)
        except rbd_cluster.rbd.Error as exc:
            return Decision.refuse(f'rbd: could not inspect {location.display}: {exc}')

    def _decide_in_cluster(self, request: Request, location: RbdLocation,
                           cluster: rbd_cluster.Cluster) -> Decision:
        rbd = rbd_cluster.rbd
        target: RbdTarget = request.target
        image = request.image
        where = f'{location.pool}/{location.image}'
        with cluster.ioctx(location.pool) as ioctx:
            try:
                parent = rbd.Image(ioctx, location.image, read_only=True)
            except rbd.ImageNotFound:
                return Decision.refuse(f'rbd: image {where} does not exist')
            with contextlib.closing(parent):
                snaps = {s['name'] for s in parent.list_snaps()}
                if location.snapshot not in snaps:
                    return Decision.refuse(
                        f'rbd: snapshot {where}@{location.snapshot} does not exist')
                if not parent.is_protected_snap(location.snapshot):
                    return Decision.refuse(
                        f'rbd: snapshot {where}@{location.snapshot} is not protected, so '
                        f'it could change under the clone')
                parent.set_snap(location.snapshot)
                snap_size = parent.size()
                depth = 1 + self._ancestors(cluster, parent)
        if image.size is not None and snap_size != image.size:
            return Decision.refuse(
                f'rbd: snapshot {where}@{location.snapshot} is {snap_size} bytes but '
                f'Glance records {image.size} for image {image.id}')
        if depth > self.max_depth:
            return Decision.refuse(
                f'rbd: the clone would be {depth} levels deep (limit {self.max_depth}; '
                f'[image_handlers] rbd_max_clone_depth)')
        if request.size is not None and request.size < snap_size:
            raise exceptions.InvalidTarget(
                f'requested disk size {request.size} is smaller than image {image.id} '
                f'({snap_size} bytes)')
        if self._exists(cluster, target):
            raise exceptions.TargetExists(
                f'target {target.display} already exists; image_handlers never '
                f'overwrites a disk: remove it yourself or choose another name')
        flatten = (self.flatten_always or request.purpose in self.flatten_purposes)
        return Decision.accept(
            f'copy-on-write clone of {where}@{location.snapshot} ({snap_size} bytes, '
            f'depth {depth}) into {target.display}'
            + (' then flatten' if flatten else ''),
            zero_copy=True, flatten=flatten, snap_size=snap_size, depth=depth)

    def _ancestors(self, cluster: rbd_cluster.Cluster, image) -> int:
        """How many parents stand above ``image`` (0 for an image that is no clone)."""
        rbd = rbd_cluster.rbd
        count = 0
        current = image
        opened = []
        try:
            while count <= self.max_depth:
                try:
                    spec = current.get_parent_image_spec()
                except rbd.ImageNotFound:
                    break
                count += 1
                with cluster.ioctx(spec['pool_name']) as ioctx:
                    current = rbd.Image(ioctx, spec['image_name'],
                                        snapshot=spec['snap_name'], read_only=True)
                    opened.append(current)
        finally:
            for img in opened:
                img.close()
        return count

    @staticmethod
    def _exists(cluster: rbd_cluster.Cluster, target: RbdTarget) -> bool:
        rbd = rbd_cluster.rbd
        with cluster.ioctx(target.pool) as ioctx:
            try:
                rbd.Image(ioctx, target.name, read_only=True).close()
            except rbd.ImageNotFound:
                return False
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
            try:
                with contextlib.closing(rbd.Image(c_ioctx, target.name)) as clone:
                    if request.size is not None and request.size > plan['snap_size']:
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
