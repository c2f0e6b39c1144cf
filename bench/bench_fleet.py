"""Benchmark: one image pushed to a simulated fleet through squid, with our copy.

    .venv/bin/python -m bench.bench_fleet [--hosts 8,32] [--image-mib 64]
        [--tiers 1,2] [--edges 4] [--rbd-clones 32] [--json out.json]
    .venv/bin/python -m bench.bench_fleet --hosts 200 --image-mib 16   # bounded

What runs (tools/lab/fleet.py): N hosts, each a network namespace with a
tc-shaped link (tbf, default 100 Mbit/s both ways), squid caches (Debian's squid 5,
collapsed forwarding, memory cache) in one tier or two (a parent and ``--edges``
children, hosts spread over them), and an nginx origin, all on one bridge in
namespaces of their own (10.213.0.0/16; the machine's interfaces are untouched).
Every host copies the image with stream_copy's engine (HttpSource through its
group's cache, sha512 checked) at the same moment; one process plays all hosts,
one thread per host, each thread inside its host's namespace (setns), each copy
with 256 KiB buffers (the default 8 MiB x 5 per copy would not fit 200 hosts).

Reported per run: wall time (first request to last verified copy), the ideal
(image / host link), bytes the origin sent (goal 1.00x the image), per-host time
spread, CPU of the hosts (this process, per host) and of squid and nginx.
Calibration for bench/fleet_model.py, measured in the same run: per-host goodput
on a shaped link (link efficiency) and what one squid serves from memory to 8
unshaped hosts at once (a cache's serving rate here, on 2 shared cores: a lower
bound for a cache machine). RBD clones beside it: N clones of one image in the lab
Ceph, the zero-copy path where no image data moves at all.

Compressed runs (``--compressed``, on by default): a real-looking image (a raw ext4
filled to 60 % with the venv's, stdlib's and /usr/lib files: bench_compressed's
make_image) compressed by tools/compress_image.py (zstd, 8 MiB frames) is pushed
the same way, each host decompressing while it copies (compression.CompressedSource)
and checking the sha512 of the decompressed image; the origin's goal is then 1.00x
the COMPRESSED size. The same ext4 image uncompressed is pushed beside it.

Bounded: each run waits at most ``--run-timeout`` seconds; everything (services,
namespaces, the tmpfs of the hosts' disks, Ceph images) is removed at the end, also
after a failure or SIGTERM; after kill -9: ``python -m tools.lab.fleet clean`` then
``python -m tools.lab stop all``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from image_handlers.copy import Checksum, CopyOptions, HttpSource, copy  # noqa: E402
from image_handlers.copy.compression import CompressedSource  # noqa: E402
from tools.lab.fleet import Fleet, Layout, enter_netns  # noqa: E402

MiB = 1 << 20
IMAGE = 'image.raw'
CALIBRATION_HOSTS = 8


def make_image(path: Path, size: int) -> str:
    """Incompressible data with a few zero runs (sparse parts of a disk); sha512."""
    h = hashlib.sha512()
    block = 4 * MiB
    with open(path, 'wb') as f:
        pos = 0
        i = 0
        while pos < size:
            n = min(block, size - pos)
            data = bytes(n) if i % 5 == 4 else os.urandom(n)
            f.write(data)
            h.update(data)
            pos += n
            i += 1
    return h.hexdigest()


class Targets:
    """A tmpfs for the hosts' disks (RAM: the disk of this VM would be the
    bottleneck, not the network), unmounted at the end."""

    def __init__(self, size: int) -> None:
        # The pid in the name: tools.lab.fleet clean knows a killed run's mount.
        self.path = tempfile.mkdtemp(prefix=f'ih-fleet-disks-{os.getpid()}-')
        subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', self.path],
                       check=True)

    def close(self) -> None:
        subprocess.run(['umount', '-l', self.path], check=False)
        os.rmdir(self.path)


def push(fleet: Fleet, size: int, sha512: str, disks: str, timeout: float,
         buffer_size: int = 256 << 10, name: str = IMAGE,
         codec: str | None = None) -> dict:
    """Every host copies the image at once; per-host seconds and errors."""
    n = fleet.layout.hosts
    ready = threading.Barrier(n + 1)
    go = threading.Event()
    ends: dict[int, float] = {}
    errors: dict[int, str] = {}
    checksum = Checksum('sha512', sha512)
    url = fleet.origin.url_for(name)
    opts = CopyOptions(buffer_size=buffer_size, checkpoint_interval=64 * MiB,
                       retries=3, retry_backoff=0.2, progress_interval=3600,
                       read_timeout=60, direct_io=False)

    def host(i: int) -> None:
        try:
            enter_netns(fleet.host_ns[i])
        except OSError as exc:
            errors[i] = str(exc)
            ready.wait()
            return
        ready.wait()
        go.wait()
        target = os.path.join(disks, f'host{i}')
        try:
            source = HttpSource(url, proxy=fleet.proxy_for(i))
            if codec:
                source = CompressedSource(source, codec)
            copy(source, target, checksum=checksum,
                 expected_size=size, options=opts).wait(timeout)
            ends[i] = time.monotonic()
            os.unlink(target)       # verified; free the RAM for the others
        except Exception as exc:  # noqa: BLE001 - reported in the table
            errors[i] = f'{type(exc).__name__}: {exc}'

    threads = [threading.Thread(target=host, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    cpu0, svc0 = os.times(), fleet.service_cpu()
    t0 = time.monotonic()
    go.set()
    deadline = t0 + timeout + 5
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    wall = time.monotonic() - t0
    cpu1, svc1 = os.times(), fleet.service_cpu()
    hung = sum(t.is_alive() for t in threads)
    if hung:
        errors[-1] = f'{hung} hosts still copying after {timeout:.0f} s'
    per_host = sorted(end - t0 for end in ends.values())
    return {
        'wall_s': wall, 'per_host_s': per_host, 'errors': errors,
        'host_cpu_s': (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        'service_cpu_s': {k: round(svc1.get(k, 0) - svc0.get(k, 0), 2) for k in svc1},
    }


def run_layout(layout: Layout, run_dir: Path, image: Path, sha512: str,
               timeout: float, size: int | None = None, codec: str | None = None,
               label: str = 'random') -> dict:
    """One push of ``image`` (``codec``: a compressed file of an image of ``size``
    bytes) to a fresh fleet."""
    served = image.stat().st_size
    size = size or served
    fleet = Fleet(layout, run_dir)
    disks = Targets(size * layout.hosts + 64 * MiB)
    try:
        fleet.up()
        os.link(image, fleet.origin.docroot / image.name)
        result = push(fleet, size, sha512, disks.path, timeout, name=image.name,
                      codec=codec)
        responses, sent = fleet.origin.sent(image.name)
        parents = sum(('FIRSTUP_PARENT' in line or 'HIER_DIRECT' in line)
                      and image.name in line for s in fleet.squids for line in s.log_lines())
        result.update(layout=dataclass_dict(layout), size=size, served_size=served,
                      codec=codec, label=label, origin_responses=responses,
                      origin_bytes=sent, upstream_fetches=parents,
                      setup_s=round(fleet.setup_seconds, 2))
        return result
    finally:
        try:
            fleet.down()
        finally:
            disks.close()


def calibrate(run_dir: Path, image: Path, sha512: str, timeout: float) -> dict:
    """What one squid serves from memory to CALIBRATION_HOSTS hosts at once, links
    unshaped (tbf at 40 Gbit/s): a cache's serving rate on this machine."""
    layout = Layout(hosts=CALIBRATION_HOSTS, tiers=1, host_mbit=40000, cache_mbit=40000,
                    origin_mbit=40000)
    size = image.stat().st_size
    fleet = Fleet(layout, run_dir)
    disks = Targets(size * layout.hosts + 64 * MiB)
    try:
        fleet.up()
        os.link(image, fleet.origin.docroot / IMAGE)
        one = push_one(fleet, size, sha512, disks.path, timeout)   # fills the cache
        result = push(fleet, size, sha512, disks.path, timeout, buffer_size=1 << 20)
        served = size * (layout.hosts - len(result['errors']))
        squid_cpu = sum(v for k, v in result['service_cpu_s'].items()
                        if not k.endswith('-origin'))
        return {'cache_MiBps': served / MiB / result['wall_s'],
                'cache_cpu_s_per_GiB': squid_cpu / (served / (1 << 30)) if served else None,
                'host_cpu_s_per_GiB': result['host_cpu_s'] / (served / (1 << 30))
                if served else None,
                'cold_fill_s': one, 'errors': result['errors']}
    finally:
        try:
            fleet.down()
        finally:
            disks.close()


def push_one(fleet: Fleet, size: int, sha512: str, disks: str, timeout: float) -> float:
    """Host 0 alone fetches the image (cache miss through every tier)."""
    result: dict = {}

    def one() -> None:
        enter_netns(fleet.host_ns[0])
        t0 = time.monotonic()
        copy(HttpSource(fleet.origin.url_for(IMAGE), proxy=fleet.proxy_for(0)),
             os.path.join(disks, 'warm'), checksum=Checksum('sha512', sha512),
             options=CopyOptions(buffer_size=1 << 20, direct_io=False)).wait(timeout)
        result['s'] = time.monotonic() - t0
        os.unlink(os.path.join(disks, 'warm'))
    t = threading.Thread(target=one)
    t.start()
    t.join(timeout + 5)
    if 's' not in result:
        raise RuntimeError('warming the cache failed (see the log above)')
    return result['s']


def rbd_clones(count: int, run_dir: Path) -> dict:
    """``count`` clones of one protected snapshot in the lab Ceph (bench_rbd_clone's
    bare clone): the time per clone and the data moved (none)."""
    import rados
    import rbd
    from tools.lab import CephService
    ceph = CephService(run_dir=run_dir)
    ceph.start()
    conn = rados.Rados(conffile=str(ceph.conf_path), rados_id='admin')
    conn.connect(timeout=30)
    name = f'fleet-{os.getpid()}'
    clones: list[str] = []
    try:
        with conn.open_ioctx('images') as images, conn.open_ioctx('vms') as vms:
            rbd.RBD().create(images, name, 1 << 30, old_format=False,
                             features=rbd.RBD_FEATURE_LAYERING)
            with rbd.Image(images, name) as img:
                img.write(os.urandom(4 * MiB), 0)
                img.create_snap('snap')
                img.protect_snap('snap')
            times = []
            t_all = time.monotonic()
            for i in range(count):
                clone = f'{name}-disk{i}'
                t0 = time.monotonic()
                rbd.RBD().clone(images, name, 'snap', vms, clone,
                                features=rbd.RBD_FEATURE_LAYERING)
                times.append(time.monotonic() - t0)
                clones.append(clone)
            total = time.monotonic() - t_all
            for clone in clones:
                rbd.RBD().remove(vms, clone)
            clones.clear()
            with rbd.Image(images, name) as img:
                img.unprotect_snap('snap')
                img.remove_snap('snap')
            rbd.RBD().remove(images, name)
        return {'count': count, 'total_s': total, 'median_ms': statistics.median(times) * 1e3,
                'max_ms': max(times) * 1e3, 'data_moved_bytes': 0}
    finally:
        for clone in clones:
            try:
                with conn.open_ioctx('vms') as vms:
                    rbd.RBD().remove(vms, clone)
            except Exception:  # noqa: BLE001 - best effort on a failure path
                pass
        conn.shutdown()
        if not ceph.reused:
            ceph.stop()


def real_image(work: Path, size: int) -> tuple[Path, str, Path, float]:
    """(raw ext4 image of real files, its sha512, its zstd file, ratio)."""
    from bench.bench_compressed import make_image as make_ext4
    from tools import compress_image
    sub = work / 'real'
    sub.mkdir()
    raw, _files = make_ext4(sub, size)
    plain = work / 'real.raw'
    os.replace(raw, plain)
    h = hashlib.sha512()
    with open(plain, 'rb') as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    zst = work / 'real.raw.zst'
    done = compress_image.compress(str(plain), str(zst), 'zstd', 8 * MiB)
    shutil.rmtree(sub, ignore_errors=True)
    return plain, h.hexdigest(), zst, done.size / done.compressed_size


def dataclass_dict(obj) -> dict:
    import dataclasses
    return dataclasses.asdict(obj)


def fmt_run(r: dict) -> str:
    lay = r['layout']
    tree = '1 tier' if lay['tiers'] == 1 else f"2 tiers ({lay['edges']} edges)"
    tree = f"{tree}, {r.get('label', 'random')}"
    ph = r['per_host_s']
    ideal = r['served_size'] / (lay['host_mbit'] * 1e6 / 8)   # the bytes on the wire
    spread = (f"{ph[0]:6.2f} {statistics.median(ph):6.2f} {ph[-1]:6.2f}"
              if ph else '     -      -      -')
    squid = sum(v for k, v in r['service_cpu_s'].items() if not k.endswith('-origin'))
    ok = lay['hosts'] - len([k for k in r['errors'] if k >= 0])
    return (f"{lay['hosts']:5d} {tree:27s} {r['size'] / MiB:6.0f} {r['wall_s']:7.2f} "
            f"{ideal:7.2f} {r['origin_bytes'] / r['served_size']:8.2f}x "
            f"{r['origin_responses']:4d} "
            f"{spread}  {r['host_cpu_s'] / lay['hosts']:6.3f} {squid:7.2f}  {ok}/{lay['hosts']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--hosts', default='8,32', help='comma-separated fleet sizes')
    p.add_argument('--image-mib', type=int, default=64)
    p.add_argument('--tiers', default='1,2')
    p.add_argument('--edges', type=int, default=4, help='child caches with 2 tiers')
    p.add_argument('--host-mbit', type=int, default=100)
    p.add_argument('--cache-mbit', type=int, default=1000)
    p.add_argument('--origin-mbit', type=int, default=1000)
    p.add_argument('--rbd-clones', type=int, default=32, help='0: skip the Ceph part')
    p.add_argument('--no-compressed', dest='compressed', action='store_false',
                   help='skip the real-image runs (raw and zstd)')
    p.add_argument('--no-calibration', action='store_true',
                   help='skip the cache serving-rate run (the model then has no input)')
    p.add_argument('--calibration-mib', type=int, default=128,
                   help='image size of the cache serving-rate run (at least --image-mib)')
    p.add_argument('--run-timeout', type=float, default=300.0)
    p.add_argument('--run-dir', default=os.environ.get('IH_LAB_RUN_DIR')
                   or os.path.join(REPO, '.lab', 'run'))
    p.add_argument('--json', help='write every measurement here (bench/fleet_model.py '
                                  '--from reads it)')
    args = p.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks tear everything down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        p.error('needs root (network namespaces, tc, tmpfs)')
    sizes = [int(x) for x in args.hosts.split(',') if x]
    tiers = [int(x) for x in args.tiers.split(',') if x]
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix='ih-fleet-', dir=run_dir))
    out: dict = {'runs': [], 'args': vars(args)}
    try:
        image = work / IMAGE
        sha512 = make_image(image, args.image_mib * MiB)
        print(f'image: {args.image_mib} MiB (incompressible, 20 % zero runs), sha512 '
              f'checked by every host; links: hosts {args.host_mbit} Mbit/s, caches '
              f'{args.cache_mbit} Mbit/s, origin {args.origin_mbit} Mbit/s (tc tbf)')
        print(f"{'hosts':>5} {'caches, image':27s} {'MiB':>6} {'wall s':>7} {'ideal':>7} "
              f"{'origin':>9} {'GETs':>4} {'host s min/median/max':>20}  "
              f"{'CPU/host':>6} {'squid s':>7}  ok")
        for n in sizes:
            for t in tiers:
                if t == 2 and n < 2:
                    continue
                layout = Layout(hosts=n, tiers=t, edges=min(args.edges, n),
                                host_mbit=args.host_mbit, cache_mbit=args.cache_mbit,
                                origin_mbit=args.origin_mbit)
                r = run_layout(layout, run_dir, image, sha512, args.run_timeout)
                out['runs'].append(r)
                print(fmt_run(r), flush=True)
                for k, e in sorted(r['errors'].items())[:3]:
                    print(f'      error (host {k}): {e}')
        if args.compressed:
            plain, real_sha, zst, ratio = real_image(work, args.image_mib * MiB)
            out['compression_ratio'] = ratio
            print(f"real image: raw ext4 of {args.image_mib} MiB, 60 % real files; zstd "
                  f"(8 MiB frames) {zst.stat().st_size / MiB:.1f} MiB, ratio {ratio:.2f}; "
                  f"origin column for zstd: x the compressed size")
            for n in sizes:
                layout = Layout(hosts=n, tiers=tiers[0], edges=min(args.edges, n),
                                host_mbit=args.host_mbit, cache_mbit=args.cache_mbit,
                                origin_mbit=args.origin_mbit)
                for path, codec, label in ((plain, None, 'ext4 raw'),
                                           (zst, 'zstd', f'ext4 zstd x{ratio:.1f}')):
                    r = run_layout(layout, run_dir, path, real_sha, args.run_timeout,
                                   size=plain.stat().st_size, codec=codec, label=label)
                    out['runs'].append(r)
                    print(fmt_run(r), flush=True)
                    for k, e in sorted(r['errors'].items())[:3]:
                        print(f'      error (host {k}): {e}')
            plain.unlink()
            zst.unlink()
        else:
            print('compressed image: not run (--no-compressed)')
        if not args.no_calibration:
            cal_image = work / 'calibration.raw'
            cal_sha = make_image(cal_image, max(args.image_mib, args.calibration_mib) * MiB)
            cal = calibrate(run_dir, cal_image, cal_sha, args.run_timeout)
            cal_image.unlink()
            out['calibration'] = cal
            print(f"calibration: one squid serving {CALIBRATION_HOSTS} unshaped hosts "
                  f"from memory: {cal['cache_MiBps']:.0f} MiB/s (squid "
                  f"{cal['cache_cpu_s_per_GiB'] or 0:.2f} CPU s/GiB, hosts "
                  f"{cal['host_cpu_s_per_GiB'] or 0:.2f} CPU s/GiB incl. sha512); cold "
                  f"fetch through it {cal['cold_fill_s']:.2f} s")
        # Link efficiency from a small uncompressed run only: with many hosts the
        # caches and this machine's CPU pace them, not their links.
        shaped = [r for r in out['runs'] if r['per_host_s'] and not r.get('codec')
                  and r['layout']['hosts'] <= CALIBRATION_HOSTS]
        if not shaped:
            print(f'link efficiency: not measured (no uncompressed run with at most '
                  f'{CALIBRATION_HOSTS} hosts)')
        if shaped:
            r0 = min(shaped, key=lambda r: r['layout']['hosts'])
            rate = statistics.median(r0['size'] / s for s in r0['per_host_s'])
            eff = rate * 8 / (r0['layout']['host_mbit'] * 1e6)
            out['link_efficiency'] = eff
            out['link_efficiency_from'] = r0['layout']
            print(f"link efficiency: median host goodput {rate / MiB:.2f} MiB/s on a "
                  f"{r0['layout']['host_mbit']} Mbit/s link = {eff:.2f} of nominal "
                  f"(run with {r0['layout']['hosts']} hosts)")
        if args.rbd_clones:
            rc = rbd_clones(args.rbd_clones, run_dir)
            out['rbd_clones'] = rc
            print(f"zero-copy beside it: {rc['count']} RBD clones of one image in the lab "
                  f"Ceph: {rc['total_s']:.2f} s in all, median {rc['median_ms']:.1f} ms, "
                  f"max {rc['max_ms']:.1f} ms per clone, 0 bytes of image data moved")
        if 'calibration' in out and 'link_efficiency' in out:
            from bench import fleet_model
            print()
            fleet_model.report(fleet_model.Calibration.from_bench(out))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        left = subprocess.run(['ip', 'netns', 'list'], capture_output=True,
                              text=True).stdout
        mine = [line for line in left.split('\n') if line.startswith(f'ihf{os.getpid()}-')]
        print('teardown: ' + ('every namespace, service, tmpfs and Ceph image created was '
                              'removed' if not mine else f'LEFT BEHIND: {mine[:3]}'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
