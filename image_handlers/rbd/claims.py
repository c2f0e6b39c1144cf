"""What an rbd:// location claims, checked before any handler reads or clones it.

A location is a claim made by whoever added it (OSSN-0065/0090): Glance accepts
forged fsids, other pools and other images' names. rbd_clone and stream_copy both
read an rbd location only when these checks pass, and both refuse with the same
words, so an operator reads one reason whichever handler looked.
"""
from __future__ import annotations

import contextlib
import dataclasses

from oslo_config import cfg

from image_handlers import conf as ih_conf
from image_handlers.exceptions import Refused
from image_handlers.image import ImageInfo
from image_handlers.locations import RbdLocation
from image_handlers.rbd import cluster as rbd_cluster


def check_names(location: RbdLocation, image: ImageInfo,
                allowed_pools: set[str]) -> None:
    """Pool allowed, and the RBD image named after the Glance image (as glance_store
    names it). Costs no cluster round trip, so it runs first."""
    if location.pool not in allowed_pools:
        raise Refused(
            f'rbd: pool {location.pool!r} is not an allowed source pool (allowed: '
            f'{", ".join(sorted(allowed_pools))}; [image_handlers] '
            f'rbd_allowed_source_pools)')
    if location.image != image.id:
        raise Refused(
            f'rbd: location names RBD image {location.image!r}, but Glance stores '
            f'image {image.id} under its own id: refusing a location that points '
            f'at other data')


@dataclasses.dataclass(frozen=True)
class SnapshotInfo:
    size: int
    protected: bool
    ancestors: int      # parents standing above the image (0: not a clone)
    # RBD's own ids of the image and the snapshot: a snapshot deleted and made
    # again under the same name (or an image re-created) has new ones.
    identity: str = ''


def inspect_snapshot(cluster: rbd_cluster.Cluster, location: RbdLocation,
                     image: ImageInfo, max_ancestors: int = 0) -> SnapshotInfo:
    """Open the snapshot once: it must exist and have the size Glance records.

    Parents are counted up to ``max_ancestors`` + 1 (0 skips the walk), enough to
    tell that a limit is exceeded without walking a long chain to its end.
    """
    rbd = rbd_cluster.rbd
    where = f'{location.pool}/{location.image}'
    try:
        with cluster.ioctx(location.pool) as ioctx:
            try:
                img = rbd.Image(ioctx, location.image, read_only=True)
            except rbd.ImageNotFound:
                raise Refused(f'rbd: image {where} does not exist in cluster '
                              f'{cluster.fsid}')
            with contextlib.closing(img):
                snaps = {s['name']: s for s in img.list_snaps()}
                if location.snapshot not in snaps:
                    raise Refused(f'rbd: snapshot {where}@{location.snapshot} does '
                                  f'not exist in cluster {cluster.fsid}')
                identity = (f'{cluster.fsid}/{location.pool}/{img.id()}@'
                            f'{snaps[location.snapshot]["id"]}')
                protected = img.is_protected_snap(location.snapshot)
                img.set_snap(location.snapshot)
                info = SnapshotInfo(
                    size=img.size(), protected=protected,
                    identity=f'{identity}:{img.size()}',
                    ancestors=(_count_ancestors(cluster, img, max_ancestors + 1)
                               if max_ancestors else 0))
    except rbd.Error as exc:
        raise Refused(f'rbd: could not inspect {location.display}: {exc}') from exc
    if image.size is not None and info.size != image.size:
        raise Refused(
            f'rbd: snapshot {where}@{location.snapshot} is {info.size} bytes but '
            f'Glance records {image.size} for image {image.id}')
    return info


def _count_ancestors(cluster: rbd_cluster.Cluster, img, limit: int) -> int:
    """How many parents stand above ``img``, counting at most ``limit``."""
    rbd = rbd_cluster.rbd
    count, current = 0, img
    with contextlib.ExitStack() as opened:
        while count < limit:
            try:
                spec = current.get_parent_image_spec()
            except rbd.ImageNotFound:
                break
            count += 1
            ioctx = opened.enter_context(cluster.ioctx(spec['pool_name']))
            current = opened.enter_context(contextlib.closing(rbd.Image(
                ioctx, spec['image_name'], snapshot=spec['snap_name'],
                read_only=True)))
    return count


@dataclasses.dataclass(frozen=True)
class KnownClusters:
    """The clusters a full copy may read: rbd_ceph_conf and rbd_source_ceph_confs.

    Matched by fsid, connecting lazily in that order (one cached connection per
    cluster and process, see rbd.cluster.get_cluster). An extra conf gets our user
    but not rbd_keyring: each cluster's ceph.conf names its own keyring.
    """

    settings: tuple[rbd_cluster.ClusterSettings, ...]

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> 'KnownClusters':
        main = rbd_cluster.ClusterSettings.from_conf(conf)
        found = [main]
        for path in conf[ih_conf.GROUP].rbd_source_ceph_confs:
            path = path.strip()
            if not path or path == main.ceph_conf:
                continue
            extra = dataclasses.replace(
                rbd_cluster.ClusterSettings.from_conf(conf, ceph_conf=path),
                keyring=None)
            if extra not in found:
                found.append(extra)
        return cls(tuple(found))

    def find(self, fsid: str) -> rbd_cluster.Cluster:
        """The cluster whose fsid is ``fsid`` (connected); Refused says why not."""
        known, unreachable = [], []
        for settings in self.settings:
            try:
                cluster = rbd_cluster.get_cluster(settings)
            except rbd_cluster.ClusterUnavailable as exc:
                unreachable.append(f'{settings.ceph_conf}: {exc}')
                continue
            if cluster.fsid == fsid:
                return cluster
            known.append(f'{cluster.fsid} ({settings.ceph_conf})')
        raise Refused(
            f'rbd: fsid {fsid} is not the fsid of any cluster this host reads (known: '
            f'{", ".join(known) or "none"}'
            + (f'; unreachable: {"; ".join(unreachable)}' if unreachable else '')
            + '); a cluster is read only when its ceph.conf is [image_handlers] '
              'rbd_ceph_conf or listed in rbd_source_ceph_confs')
