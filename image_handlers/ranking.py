"""Order the (handler, location) candidates of one request.

Handler order comes first (the deployer's list). Within a handler, locations are
ordered by operator weight from location metadata (per-host weight, else global
weight; higher first), then healthy before failed recently on this host (see
throughput.py; off with location_failure_half_life = 0), then, when the target
has a partial copy, the locations the handler says resume it best (stream_copy:
direct ones before Glance's data API, which may ignore the range request and
start over; found by tools/kill_trials.py), then, when enabled, by
throughput measured on this host (locations never measured first, so each gets
measured), then by Glance's order.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from image_handlers.locations import Location
from image_handlers.throughput import Health, ThroughputStore


@dataclasses.dataclass(frozen=True)
class RankedLocation:
    location: Location
    weight: int
    mib_per_s: float | None
    health: Health = Health()
    throughput_used: bool = True
    resumes: bool = False       # resumes the target's partial copy best

    @property
    def why(self) -> str:
        speed = ('not measured yet' if self.mib_per_s is None
                 else f'{self.mib_per_s:.0f} MiB/s measured here')
        if self.mib_per_s is not None and not self.throughput_used:
            speed += ' (not used: prefer_measured_throughput is off)'
        failed = ''
        if self.health.failed_recently:
            failed = (f', failed {self.health.failures}x recently, last '
                      f'{self.health.last_failure_ago:.0f} s ago: tried after healthy ones')
        resumes = (', resumes the partial copy of the target: tried first'
                   if self.resumes else '')
        return (f'weight {self.weight}, {speed}{failed}{resumes}, '
                f'Glance position {self.location.index}')

    def details(self) -> dict:
        """The numbers behind ``why``, for explain's attempts."""
        return {'rank': self.why, 'weight': self.weight, **self.health.to_dict()}


def rank_locations(locations: list[Location], host: str,
                   store: ThroughputStore | None,
                   use_throughput: bool = True,
                   resumes: Callable[[Location], bool] | None = None
                   ) -> list[RankedLocation]:
    """``store`` None: weight and Glance order only; ``use_throughput`` False: the
    store still puts recently failed locations last, but speed does not order.
    ``resumes(location)``: True for locations that resume a partial copy best."""
    measured = store.load() if store is not None else {}

    def health(loc: Location) -> Health:
        return store.health_of(measured, loc.endpoint_key) if store else Health()

    ranked = []
    for loc in locations:
        h = health(loc)
        ranked.append(RankedLocation(loc, loc.weight_for(host), h.mib_per_s, h,
                                     use_throughput,
                                     bool(resumes is not None and resumes(loc))))
    by_speed = store is not None and use_throughput
    ranked.sort(key=lambda r: (
        -r.weight,
        r.health.failed_recently,
        not r.resumes,
        -(math.inf if r.mib_per_s is None else r.mib_per_s) if by_speed else 0,
        r.location.index))
    return ranked
