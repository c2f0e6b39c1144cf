"""Order the (handler, location) candidates of one request.

Handler order comes first (the deployer's list). Within a handler, locations are
ordered by operator weight from location metadata (per-host weight, else global
weight; higher first), then, when enabled, by throughput measured on this host
(locations never measured first, so each gets measured), then by Glance's order.
"""
from __future__ import annotations

import dataclasses
import math

from image_handlers.locations import Location
from image_handlers.throughput import ThroughputStore


@dataclasses.dataclass(frozen=True)
class RankedLocation:
    location: Location
    weight: int
    mib_per_s: float | None

    @property
    def why(self) -> str:
        speed = ('not measured yet' if self.mib_per_s is None
                 else f'{self.mib_per_s:.0f} MiB/s measured here')
        return f'weight {self.weight}, {speed}, Glance position {self.location.index}'


def rank_locations(locations: list[Location], host: str,
                   store: ThroughputStore | None) -> list[RankedLocation]:
    measured = store.load() if store is not None else {}

    def speed(loc: Location) -> float | None:
        entry = measured.get(loc.endpoint_key)
        return float(entry['mib_s']) if entry else None

    ranked = [RankedLocation(loc, loc.weight_for(host), speed(loc)) for loc in locations]
    ranked.sort(key=lambda r: (
        -r.weight,
        -(math.inf if r.mib_per_s is None else r.mib_per_s) if store is not None else 0,
        r.location.index))
    return ranked
