"""A model of pushing one image through a cache tree, calibrated by bench_fleet.py.

    .venv/bin/python -m bench.fleet_model --from fleet.json

Inputs, all measured by bench/bench_fleet.py in one run on this machine:

- ``link_efficiency``: a host's goodput through squid over its tbf-shaped link, as a
  fraction of the link's nominal rate (TCP, HTTP, hashing and writing included);
- ``cache_MiBps``: what ONE squid process served from memory to 8 hosts at once
  with unshaped links (here it shares 2 cores with those hosts: a lower bound for
  a cache machine);
- ``fixed_s``: the time of the smallest shaped run beyond image / goodput (first
  request through the tiers, connection set-up, the last host's verification);
- ``rbd_clone_ms``: the median time of one RBD clone in the lab Ceph.

The tree streams: squid's collapsed forwarding hands bytes to every waiting client
while they arrive from its parent, so tiers overlap and the push is paced by its
slowest level: per host, rate = min(link x efficiency, cache rate / hosts per
cache, parent rate / caches per parent); wall = image / rate + fixed_s per tier.
Assumed, not measured: one squid process per cache machine, caches on links of
``cache_gbit`` (default 10) each, the origin sends the image once per parent.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

MiB = 1 << 20
CERN = {'name': 'CERN (squid tree + gzip)', 'image_bytes': 1.7e9, 'hosts': 1300,
        'link_gbit': 1.0, 'their_s': 9 * 60}
VMTHUNDER = {'name': 'VMThunder (iSCSI + CoR + P2P)', 'image_bytes': 1.7e9,
             'hosts': 160, 'link_gbit': 1.0, 'their_s': 60}


@dataclasses.dataclass(frozen=True)
class Calibration:
    link_efficiency: float
    cache_MiBps: float
    fixed_s: float
    rbd_clone_ms: float | None = None
    cache_core_MiBps: float | None = None   # 1 / squid CPU seconds per MiB served
    compression_ratio: float | None = None  # the real image's zstd ratio
    decode_MiBps: float | None = None       # a host's zstd decode + sha512, per core
    host_MiBps: float | None = None         # a host's copy + sha512 (uncompressed), per core
    source: str = ''

    @classmethod
    def from_bench(cls, out: dict) -> 'Calibration':
        runs = [r for r in out['runs'] if r['per_host_s'] and not r.get('codec')]
        small = min(runs, key=lambda r: (r['layout']['hosts'], r['layout']['tiers']))
        eff = out['link_efficiency']
        goodput = small['layout']['host_mbit'] * 1e6 / 8 * eff
        fixed = max(0.0, small['wall_s'] - small['size'] / goodput)
        rc = out.get('rbd_clones') or {}
        cpu = out['calibration'].get('cache_cpu_s_per_GiB')
        zstd = [r for r in out['runs'] if r.get('codec') and r['per_host_s']]
        decode = None
        if zstd:
            z = max(zstd, key=lambda r: r['layout']['hosts'])
            gib = z['size'] * len(z['per_host_s']) / (1 << 30)
            decode = 1024 * gib / z['host_cpu_s'] if z['host_cpu_s'] else None
        return cls(link_efficiency=eff, cache_MiBps=out['calibration']['cache_MiBps'],
                   fixed_s=fixed, rbd_clone_ms=rc.get('median_ms'),
                   cache_core_MiBps=1024 / cpu if cpu else None,
                   compression_ratio=out.get('compression_ratio') if zstd else None,
                   decode_MiBps=decode,
                   host_MiBps=(1024 / out['calibration']['host_cpu_s_per_GiB']
                               if out['calibration'].get('host_cpu_s_per_GiB') else None),
                   source=f"bench_fleet run, {len(out['runs'])} fleet runs")


@dataclasses.dataclass(frozen=True)
class Tree:
    """Caches per level, from the root: (1,) one cache serves every host; (1, 26)
    a parent and 26 children, hosts spread over the children; (1, 6, 36)..."""

    caches: tuple[int, ...]
    cache_gbit: float = 10.0

    def clients(self, hosts: int) -> list[int]:
        """How many clients each cache of each level serves (ceil)."""
        below = list(self.caches[1:]) + [hosts]
        return [math.ceil(b / c) for c, b in zip(self.caches, below)]

    def describe(self, hosts: int) -> str:
        if len(self.caches) == 1:
            return f'1 squid -> {hosts} hosts'
        levels = ' -> '.join(f'{c}' for c in self.caches)
        return (f'squids {levels} -> {math.ceil(hosts / self.caches[-1])} hosts each '
                f'({sum(self.caches)} caches)')


@dataclasses.dataclass(frozen=True)
class Prediction:
    wall_s: float
    per_host_MiBps: float
    bottleneck: str


def predict(image_bytes: float, hosts: int, link_gbit: float, tree: Tree,
            cache_MiBps: float, cal: Calibration,
            compression_ratio: float = 1.0) -> Prediction:
    """Wall time of one push; ``compression_ratio`` > 1 divides the bytes moved
    (a host's decompression must then keep up, which the bench measures)."""
    link = link_gbit * 1e9 / 8 * cal.link_efficiency
    cache = min(cache_MiBps * MiB, tree.cache_gbit * 1e9 / 8 * cal.link_efficiency)
    # Rates in image bytes per second: compressed bytes carry ratio x image bytes.
    levels = [('host link', link * compression_ratio)] + [
        (f'level-{i + 1} caches ({n} clients each)', cache / n * compression_ratio)
        for i, n in enumerate(tree.clients(hosts))]
    if compression_ratio > 1 and cal.decode_MiBps:
        levels.append(('host decompression + sha512', cal.decode_MiBps * MiB))
    elif compression_ratio == 1 and cal.host_MiBps:
        levels.append(('host copy + sha512', cal.host_MiBps * MiB))
    name, rate = min(levels, key=lambda kv: kv[1])
    return Prediction(wall_s=image_bytes / rate + cal.fixed_s * len(tree.caches),
                      per_host_MiBps=rate / MiB, bottleneck=name)


def smallest_tree(case: dict, cache_MiBps: float, cal: Calibration,
                  depth: int, ratio: float = 1.0) -> Tree | None:
    """The tree of ``depth`` levels with the fewest caches under the case's figure
    (equal fan-out at each level)."""
    hosts = case['hosts']
    for fan in range(1, hosts + 1):
        caches = tuple(min(hosts, fan ** i) for i in range(depth))
        tree = Tree(caches)
        if max(tree.clients(hosts)) > fan and depth > 1:
            continue
        p = predict(case['image_bytes'], hosts, case['link_gbit'], tree, cache_MiBps, cal,
                    ratio)
        if p.wall_s < case['their_s']:
            return tree
    return None


def _case(case: dict, cal: Calibration, rates: list[tuple[str, float]],
          ratio: float = 1.0) -> list[str]:
    lines = [f"{case['name']}: {case['image_bytes'] / 1e9:.1f} GB to {case['hosts']} "
             f"hosts on {case['link_gbit']:g} Gbit/s links; their figure "
             f"{case['their_s'] / 60:.0f} min"]
    for label, rate in rates:
        comp = f', zstd x{ratio:.2f}' if ratio > 1 else ', uncompressed'
        lines.append(f"  with one squid serving {rate:.0f} MiB/s ({label}{comp}):")
        trees = [Tree((1,))] + [t for t in (smallest_tree(case, rate, cal, d, ratio)
                                            for d in (2, 3)) if t is not None]
        for tree in dict.fromkeys(trees):
            p = predict(case['image_bytes'], case['hosts'], case['link_gbit'], tree,
                        rate, cal, ratio)
            mark = 'under' if p.wall_s < case['their_s'] else 'OVER'
            lines.append(f"    {tree.describe(case['hosts']):50s} {p.wall_s / 60:6.1f} min"
                         f" ({p.per_host_MiBps:6.1f} MiB/s per host, paced by "
                         f"{p.bottleneck}; {mark} their {case['their_s'] / 60:.0f} min)")
    return lines


def report(cal: Calibration, out=sys.stdout) -> None:
    print(f"model inputs (measured here): link efficiency {cal.link_efficiency:.2f}, "
          f"one squid serves {cal.cache_MiBps:.0f} MiB/s on this machine"
          + (f" ({cal.cache_core_MiBps:.0f} MiB/s per core by its CPU cost)"
             if cal.cache_core_MiBps else '')
          + (f", a host copies + hashes {cal.host_MiBps:.0f} MiB/s per core"
             if cal.host_MiBps else '')
          + f", fixed {cal.fixed_s:.2f} s per tier"
          + (f", RBD clone {cal.rbd_clone_ms:.1f} ms" if cal.rbd_clone_ms else '')
          + '; assumed: caches on 10 Gbit/s links, one squid process per cache',
          file=out)
    rates = [('measured wall-clock rate, 2 shared cores', cal.cache_MiBps)]
    if cal.cache_core_MiBps:
        rates.append(('its CPU cost per GiB, one core', cal.cache_core_MiBps))
    ratios = [1.0] + ([cal.compression_ratio] if cal.compression_ratio else [])
    for case in (CERN, VMTHUNDER):
        for i, ratio in enumerate(ratios):
            lines = _case(case, cal, rates, ratio)
            for line in lines[i > 0:]:
                print(line, file=out)
    if cal.rbd_clone_ms:
        serial = VMTHUNDER['hosts'] * cal.rbd_clone_ms / 1e3
        print(f"  zero-copy instead (rbd_clone, the image in the hosts' Ceph): "
              f"{VMTHUNDER['hosts']} clones one after another {serial:.1f} s, no image "
              f"bytes moved; each host clones its own in {cal.rbd_clone_ms:.0f} ms", file=out)
    if cal.compression_ratio:
        print(f"  zstd: the real image's ratio measured here ({cal.compression_ratio:.2f}); a "
              f"host decodes and hashes {cal.decode_MiBps or 0:.0f} MiB/s per core "
              f"(measured); CERN's gzip ratio is not known here", file=out)
    else:
        print('  compressed images: not modelled (no compression ratio measured in this '
              'run)', file=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--from', dest='source', required=True,
                   help='the --json output of bench/bench_fleet.py')
    args = p.parse_args(argv)
    out = json.loads(Path(args.source).read_text())
    if 'calibration' not in out or 'link_efficiency' not in out:
        p.error(f'{args.source} has no calibration (run bench_fleet without '
                f'--no-calibration)')
    report(Calibration.from_bench(out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
