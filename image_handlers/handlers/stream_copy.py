"""``stream_copy``: the verified, resumable full copy every other handler falls back to.

Sources: http(s) locations on hosts the deployer allows, rbd locations in clusters
this host can reach (read through librbd when a clone is impossible: a file target,
or another cluster), and Glance's own image data API (always a candidate for an
active image). The copy engine in ``image_handlers.copy`` does the work; this module
only decides and configures it.

A location is a claim (OSSN-0065/0090), so an rbd location is read only when its
fsid is one of a configured cluster, its pool is an allowed source pool and its RBD
image is named after the Glance image, as for rbd_clone; the hash check after the
copy is the final word on the bytes.
"""
from __future__ import annotations

import os

from oslo_config import cfg

from image_handlers import conf as ih_conf
from image_handlers import copy as copy_engine
from image_handlers.copy.rbd_source import RbdSource
from image_handlers.handlers.base import Decision, Handler, Provided, Request
from image_handlers.locations import (GlanceApiLocation, HttpLocation, Location,
                                      RbdLocation)
from image_handlers.rbd import claims
from image_handlers.targets import FILE


def copy_options(conf: cfg.ConfigOpts) -> copy_engine.CopyOptions:
    """CopyOptions from ``[image_handlers]`` (shared with the ``copy`` command)."""
    group = conf[ih_conf.GROUP]
    return copy_engine.CopyOptions(
        buffer_size=group.copy_buffer_size,
        bandwidth_limit=group.bandwidth_limit,
        retries=group.copy_retries,
        retry_backoff=group.copy_retry_backoff,
        retry_backoff_max=group.copy_retry_backoff_max,
        checkpoint_interval=group.checkpoint_interval,
        progress_interval=group.progress_interval,
        connect_timeout=group.connect_timeout,
        read_timeout=group.read_timeout,
        sparse=group.sparse,
        direct_io=group.direct_io,
        lock_dir=os.path.join(group.state_dir, 'locks'))


class StreamCopyHandler(Handler):
    name = 'stream_copy'
    target_kinds = frozenset({FILE})
    schemes = frozenset({'http', 'glance', 'rbd'})
    zero_copy = False

    def __init__(self, conf: cfg.ConfigOpts):
        super().__init__(conf)
        group = conf[ih_conf.GROUP]
        self.allowed_hosts = {h.strip().lower() for h in group.http_location_allowed_hosts
                              if h.strip()}
        self.allow_unverified = group.allow_unverified_copies
        self.glance_api_weight = group.glance_api_weight
        self.rbd_clusters = claims.KnownClusters.from_conf(conf)
        self.rbd_source_pools = set(group.rbd_allowed_source_pools)

    def candidates(self, request: Request) -> list[Location]:
        listed = super().candidates(request)
        if request.glance_endpoint:
            listed.append(GlanceApiLocation.for_image(
                request.glance_endpoint, request.image.id, self.glance_api_weight,
                index=len(request.image.locations)))
        return listed

    def decide(self, request: Request, location: Location) -> Decision:
        image = request.image
        if not image.has_data:
            return Decision.refuse(
                f'image status is {image.status!r}: Glance holds no data for it '
                f'(upload or import the image first)')
        expected = image.expected_hash
        if expected is None and not self.allow_unverified:
            return Decision.refuse(
                'image has neither os_hash_value nor checksum, so a copy cannot be '
                'verified; set [image_handlers] allow_unverified_copies = true to '
                'accept unverified copies')
        if isinstance(location, HttpLocation):
            if not self._host_allowed(location):
                return Decision.refuse(
                    f'http location host {location.host}:{location.port} is not in '
                    f'[image_handlers] http_location_allowed_hosts (a location is a '
                    f'claim; add the host there to read it directly)')
        size = f'{image.size} bytes' if image.size is not None else 'unknown size'
        check = f'verified against {expected.algo}' if expected else 'NOT verified'
        if isinstance(location, RbdLocation):
            return self._decide_rbd(request, location, size, check)
        return Decision.accept(f'full copy of {size} from {location.display}, {check}',
                               zero_copy=False)

    def _decide_rbd(self, request: Request, location: RbdLocation, size: str,
                    check: str) -> Decision:
        """The claims rbd_clone checks, except protection: a snapshot never changes,
        and the hash check proves the bytes anyway."""
        try:
            claims.check_names(location, request.image, self.rbd_source_pools)
            cluster = self.rbd_clusters.find(location.fsid)
            claims.inspect_snapshot(cluster, location, request.image)
        except claims.Refused as refused:
            return Decision.refuse(str(refused))
        return Decision.accept(
            f'full copy of {size} from {location.display} through librbd '
            f'(cluster {cluster.fsid}, {cluster.settings.ceph_conf}), {check}',
            zero_copy=False, cluster=cluster)

    def _host_allowed(self, location: HttpLocation) -> bool:
        return (location.host in self.allowed_hosts
                or f'{location.host}:{location.port}' in self.allowed_hosts)

    def act(self, request: Request, location: Location, decision: Decision) -> Provided:
        image = request.image
        if isinstance(location, RbdLocation):
            source = RbdSource(decision.plan['cluster'], location.pool, location.image,
                               location.snapshot, description=location.display)
        else:
            headers = (request.glance_auth_headers
                       if isinstance(location, GlanceApiLocation) else None)
            source = copy_engine.HttpSource(location.url, headers=headers)
        expected = image.expected_hash
        checksum = (copy_engine.Checksum(expected.algo, expected.hexdigest)
                    if expected else None)
        task = copy_engine.copy(
            source, request.target.path, checksum=checksum, expected_size=image.size,
            options=copy_options(self.conf), lock_name=f'image-{image.id}',
            description=f'image {image.id} from {location.display}')
        result = task.wait()
        details = {'verified': str(result.checksum) if result.checksum else None,
                   'resumed_from': result.resumed_from,
                   'restarts_from_zero': result.restarts_from_zero,
                   'retries': result.retries,
                   'sparse_bytes': result.sparse_bytes,
                   'reused_existing': result.reused_existing,
                   'disk_format': image.disk_format}
        if isinstance(source, RbdSource):
            # Holes are zeros made here, not reads: what the cluster really served.
            details.update(rbd_bytes_read=source.bytes_read,
                           rbd_hole_bytes=source.hole_bytes)
        return Provided(zero_copy=False, bytes_transferred=result.bytes_transferred,
                        details=details)
