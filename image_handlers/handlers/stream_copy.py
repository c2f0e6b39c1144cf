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

HTTP caches and mirrors (``[image_handlers] http_cache``, copy/cache_tier.py) add
locations read through them; they rank like any other and are refused while
unhealthy.
"""
from __future__ import annotations

from collections.abc import Callable

from oslo_config import cfg

from image_handlers import conf as ih_conf
from image_handlers import exceptions
from image_handlers import copy as copy_engine
from image_handlers.copy import compression
from image_handlers.copy import checkpoint as copy_checkpoint
from image_handlers.copy import cache_tier
from image_handlers.copy.conf import copy_options, copy_opts
from image_handlers.copy.rbd_source import RbdSource
from image_handlers.handlers.base import Decision, Handler, Refused, Request
from image_handlers.locations import (GlanceApiLocation, HttpLocation, Location,
                                      RbdLocation)
from image_handlers.rbd import claims
from image_handlers.rbd import options as rbd_options
from image_handlers.results import Provided
from image_handlers.targets import FILE
from image_handlers.throughput import ThroughputStore


stream_copy_opts = (
    cfg.ListOpt(
        'http_location_allowed_hosts', default=[],
        help='Hosts (names or addresses, optionally host:port) whose http(s) '
             'image locations may be read directly. Any other http(s) location is '
             'refused, because a location is a claim made by whoever added it and '
             'reading it from a compute host could reach internal services. The '
             'image data API of Glance itself is always allowed.'),
    cfg.IntOpt(
        'glance_api_weight', default=0,
        help='Weight of Glance\'s own image data API among the locations of an '
             'image (location metadata "weight" works the same way; higher is '
             'tried first).'),
    cfg.ListOpt('rbd_source_ceph_confs', default=[],
                help='Further ceph.conf files of clusters that stream_copy may read '
                     'rbd:// locations from (full copy, hash verified). The cluster '
                     'is matched by fsid; rbd_ceph_conf is always included.'),
)


class StreamCopyHandler(Handler):
    name = 'stream_copy'
    target_kinds = frozenset({FILE})
    schemes = frozenset({'http', 'glance', 'rbd'})
    zero_copy = False
    opts = (tuple(copy_opts) + stream_copy_opts + tuple(cache_tier.cache_opts)
            + rbd_options.cluster_opts)

    @classmethod
    def register_opts(cls, conf: cfg.ConfigOpts) -> None:
        rbd_options.register(conf, cls.opts)

    def __init__(self, conf: cfg.ConfigOpts):
        super().__init__(conf)
        group = conf[ih_conf.GROUP]
        self.allowed_hosts = {h.strip().lower() for h in group.http_location_allowed_hosts
                              if h.strip()}
        self.glance_api_weight = group.glance_api_weight
        self.rbd_clusters = claims.KnownClusters.from_conf(conf)
        self.rbd_source_pools = set(group.rbd_allowed_source_pools)
        self.cache_routes = cache_tier.routes_from_conf(group)
        self.host = group.host
        self.health = ThroughputStore(group.state_dir, group.location_failure_half_life)

    def candidates(self, request: Request) -> list[Location]:
        listed = super().candidates(request)
        if request.glance_endpoint:
            listed.append(GlanceApiLocation.for_image(
                request.glance_endpoint, request.image.id, self.glance_api_weight,
                index=len(request.image.locations)))
        return listed + cache_tier.cache_locations(self.cache_routes, self.host, listed)

    def resumes_from(self, request: Request) -> Callable[[Location], bool] | None:
        """With a partial copy of the target, direct locations go before Glance's
        data API among equals: Glance 33 ignores Range for an image in its http
        store, so a resume through it starts over (tools/kill_trials.py: 15 of 16
        MiB kept were fetched again). A partial resumes from any location of the
        image (the final hash covers every byte)."""
        if request.target.kind != FILE or not request.target.path:
            return None
        paths = copy_checkpoint.CopyPaths.for_target(request.target.path)
        if copy_checkpoint.load(paths) is None:
            return None
        return lambda location: not isinstance(location, GlanceApiLocation)

    def decide(self, request: Request, location: Location) -> Decision:
        image = request.image
        if not image.has_data:
            raise Refused(
                f'image status is {image.status!r}: Glance holds no data for it '
                f'(upload or import the image first)')
        image_format = (image.disk_format or 'raw').lower()
        if request.target.disk_format == 'qcow2' and image_format != 'qcow2':
            raise Refused(
                f'the target is to be a qcow2 disk, and a copy gives the image\'s own '
                f'{image_format} bytes')
        if request.target.disk_format == 'qcow2':
            # A copied qcow2 used as a disk is one no format check has seen: its
            # header may name a backing or data file on this host (Nova's own
            # Qcow2 path asks for zero-copy handlers only, for that reason).
            raise Refused(
                'the target is to be a qcow2 instance disk, and a copy of a qcow2 '
                'image would be one no format check has seen (its backing or data '
                'file may name a host path): copy it to a raw target (Nova\'s _base, '
                'whose format Nova inspects), or use a zero-copy handler')
        expect = request.expect
        expected = expect.require_checksum()
        if isinstance(location, cache_tier.CacheLocation):
            self._check_cache(location)
        elif isinstance(location, HttpLocation):
            route = cache_tier.direct_refused_by(self.cache_routes, self.host, location)
            if route is not None:
                raise Refused(
                    f'[image_handlers] http_cache route {route.name} says direct=no: '
                    f'this location is read only through it, never from its origin')
            if not self._host_allowed(location):
                raise Refused(
                    f'http location host {location.host}:{location.port} is not in '
                    f'[image_handlers] http_location_allowed_hosts (a location is a '
                    f'claim; add the host there to read it directly)')
        size = f'{image.size} bytes' if image.size is not None else 'unknown size'
        check = (f'verified against {expect.describe()} while copying'
                 if expected or expect.signature else 'NOT verified')
        if isinstance(location, RbdLocation):
            return self._decide_rbd(request, location, size, check)
        try:
            packed = compression.declared(location.metadata)
        except exceptions.InvalidLocation as exc:
            raise Refused(str(exc)) from None
        missing = compression.missing_library(packed)
        if missing:
            raise Refused(f'the location metadata declares compression={packed}, and '
                          f'{missing}')
        how = f', decompressing its {packed} data' if packed else ''
        return Decision(f'full copy of {size} from {location.display}{how}, {check}',
                        method='copy')

    def _decide_rbd(self, request: Request, location: RbdLocation, size: str,
                    check: str) -> Decision:
        """The claims rbd_clone checks, except protection: a snapshot never changes,
        and the hash check proves the bytes anyway."""
        claims.check_names(location, request.image, self.rbd_source_pools)
        cluster = self.rbd_clusters.find(location.fsid)
        claims.inspect_snapshot(cluster, location, request.image)
        return Decision(
            f'full copy of {size} from {location.display} through librbd '
            f'(cluster {cluster.fsid}, {cluster.settings.ceph_conf}), {check}',
            method='copy', plan={'cluster': cluster})

    def _check_cache(self, location: 'cache_tier.CacheLocation') -> None:
        """The origin a cache would fetch must be one this host may read (the cache
        must not reach what a direct read may not), and the cache must be healthy."""
        served = location.served
        if (location.through_proxy and isinstance(served, HttpLocation)
                and not self._host_allowed(served)):
            raise Refused(
                f'http location host {served.host}:{served.port} is not in '
                f'[image_handlers] http_location_allowed_hosts, so cache '
                f'{location.route.name} may not fetch it either')
        health = self.health.health(location.endpoint_key)
        if health.failed_recently:
            raise Refused(
                f'{"cache" if location.through_proxy else "mirror"} '
                f'{location.route.name} failed {health.failures}x recently (last '
                f'{health.last_failure_ago:.0f} s ago): not used until it is healthy '
                f'again (its failure score halves every location_failure_half_life); '
                f'the next location is tried')

    def _host_allowed(self, location: HttpLocation) -> bool:
        return (location.host in self.allowed_hosts
                or f'{location.host}:{location.port}' in self.allowed_hosts)

    def act(self, request: Request, location: Location, decision: Decision) -> Provided:
        image = request.image
        if isinstance(location, RbdLocation):
            source = RbdSource(decision.plan['cluster'], location.pool, location.image,
                               location.snapshot, description=location.display)
        elif isinstance(location, cache_tier.CacheLocation):
            glance = isinstance(location.served, GlanceApiLocation)
            # The cache holds what the origin serves (compressed bytes stay
            # compressed in it): decoded here as for the location it stands for.
            source = compression.wrap(copy_engine.HttpSource(
                location.url, headers=request.glance_auth_headers if glance else None,
                proxy=location.route.proxy, proxy_gets_auth=location.route.glance),
                location.served.metadata)
        else:
            headers = (request.glance_auth_headers
                       if isinstance(location, GlanceApiLocation) else None)
            # Declared compression (location metadata) or the server's
            # Content-Encoding is decoded; otherwise the bytes pass through.
            source = compression.wrap(
                copy_engine.HttpSource(location.url, headers=headers),
                location.metadata)
        signature = request.expect.signature
        task = copy_engine.copy(
            source, request.target.path, checksum=request.expect.require_checksum(),
            expected_size=image.size,
            signature=signature.verifier if signature else None, image_id=image.id,
            options=copy_options(self.conf[ih_conf.GROUP]),
            lock_name=f'image-{image.id}',
            description=f'image {image.id} from {location.display}')
        provided = Provided.from_copy(task.wait(), image.disk_format)
        if isinstance(source, RbdSource):
            # Holes are zeros made here, not reads: what the cluster really served.
            provided.details.update(rbd_bytes_read=source.bytes_read,
                                    rbd_hole_bytes=source.hole_bytes)
        elif source.codec is not None:
            provided.details.update(compression=source.codec,
                                    compressed_bytes_read=source.compressed_bytes_read)
        return provided

