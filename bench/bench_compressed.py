"""Benchmark: a compressed copy (zstd, gzip) against the uncompressed one, one run.

    .venv/bin/python -m bench.bench_compressed [--size-mib 1024] [--rounds 3]
        [--frame-mib 8] [--run-dir DIR]

The image stands in for a real one: a raw ext4 file system (mkfs.ext4 -d) of
--size-mib holding copies of real files (this project's virtualenv, Python's
standard library, then /usr/lib's shared libraries) up to 60 % of its size, the
rest free space (zeros). A debootstrap'ed root would be more real and is heavy;
libraries and byte code compress about as an installed system does.

It is compressed with tools/compress_image.py (zstd seekable frames of
--frame-mib, level 3; gzip members through isal) and served with the raw file by
the lab's nginx (under --run-dir / IH_LAB_RUN_DIR). Every copy runs in its own
process with sha512 and sparse output; interleaved rounds, medians. Printed:

- throughput (image MiB per second) and CPU seconds per image GiB of the plain,
  zstd and gzip copies, and the ratios compressed / plain (goal: zstd throughput
  >= 0.8 x plain on loopback, where the network is no bottleneck and the
  compressed copy only adds work; its gain is bytes on a real network);
- bytes nginx sent per copy (goal: the compressed size, nothing more);
- ``curl | zstd -d | sha512sum`` as the tools' baseline for CPU (when zstd is
  installed);
- resume: a proxy cuts the zstd copy at 50 % of the compressed bytes; bytes
  fetched twice (goal: at most the largest compressed frame);
- compression ratio by frame size (1, 4, 8, 16 MiB and one frame): what
  resumability costs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.bench_stream_copy import CutProxy, nginx_bytes_sent, timed  # noqa: E402
from bench.common import hashlib_speed, prime_memory  # noqa: E402
from tools import compress_image  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
PY = sys.executable
FILL = 0.6

COPY = '''
import sys
from image_handlers import copy as c
from image_handlers.copy.compression import CompressedSource
src = c.HttpSource(sys.argv[1])
if sys.argv[4] != 'plain':
    src = CompressedSource(src, sys.argv[4])
r = c.copy(src, sys.argv[2], checksum=c.Checksum.parse(sys.argv[3]),
           options=c.CopyOptions(sparse=True, progress_interval=3600)).wait()
print(r.bytes_transferred, r.retries, r.resumed_from,
      getattr(src, 'compressed_bytes_read', 0))
'''


def file_roots() -> list[Path]:
    """Real files to fill the image with, most image-like first."""
    venv = Path(REPO) / '.venv' / 'lib'
    return [p for p in (venv, Path('/usr/lib/python3.11'),
                        Path('/usr/lib/x86_64-linux-gnu'), Path('/usr/share'))
            if p.is_dir()]


def fill_tree(dest: Path, budget: int) -> int:
    """Copy regular files from file_roots() into ``dest`` until ``budget`` bytes."""
    used = 0
    for root in file_roots():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                src = Path(dirpath) / name
                try:
                    if src.is_symlink() or not src.is_file():
                        continue
                    size = src.stat().st_size
                except OSError:
                    continue
                if used + size > budget:
                    return used
                target = dest / root.name / src.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(src, target)
                except OSError:
                    continue
                used += size
    return used


def make_image(work: Path, size: int) -> tuple[Path, int]:
    """A raw ext4 of ``size`` bytes holding real files; returns (path, file bytes)."""
    tree = work / 'tree'
    tree.mkdir()
    used = fill_tree(tree, int(size * FILL))
    image = work / 'image.raw'
    with open(image, 'wb') as f:
        f.truncate(size)
    subprocess.run(['mkfs.ext4', '-q', '-F', '-E', 'nodiscard,lazy_itable_init=0',
                    '-d', str(tree), str(image)], check=True, capture_output=True)
    shutil.rmtree(tree)
    return image, used


def frame_sizes(path: Path) -> list[int]:
    """Compressed size of every zstd frame (pyzstd.get_frame_size: headers only)."""
    import pyzstd
    data = path.read_bytes()
    sizes, pos = [], 0
    while pos < len(data):
        n = pyzstd.get_frame_size(data[pos:pos + (64 * MiB)])
        sizes.append(n)
        pos += n
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size-mib', type=int, default=1024)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--frame-mib', type=int, default=8)
    parser.add_argument('--run-dir', default=None,
                        help='lab run dir for nginx and the work dir (default: a '
                             'fresh one, removed at the end)')
    parser.add_argument('--no-frame-table', action='store_true',
                        help='skip the ratio-by-frame-size table')
    parser.add_argument('--no-warmup', action='store_true',
                        help='no discarded warm-up round (the smoke test)')
    args = parser.parse_args()
    own_dir = args.run_dir is None
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix='bench-compressed-'))
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ['IH_LAB_RUN_DIR'] = str(run_dir)
    from tools.lab.nginx import NginxService    # reads IH_LAB_RUN_DIR
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix='work-', dir=run_dir))
    nginx = NginxService(run_dir=run_dir)
    try:
        image, used = make_image(work, size)
        outs = {}
        for codec, name in (('zstd', 'image.raw.zst'), ('gzip', 'image.raw.gz')):
            outs[codec] = compress_image.compress(str(image), str(work / name), codec,
                                                  args.frame_mib * MiB)
        digest = outs['zstd'].sha512
        nginx.start()
        urls = {'plain': nginx.publish(image, 'image.raw'),
                'zstd': nginx.publish(work / 'image.raw.zst', 'image.raw.zst'),
                'gzip': nginx.publish(work / 'image.raw.gz', 'image.raw.gz')}
        names = {'plain': 'image.raw', 'zstd': 'image.raw.zst', 'gzip': 'image.raw.gz'}
        dst = str(work / 'out.raw')
        samples: dict[str, list[tuple[float, float]]] = {}
        sent: dict[str, int] = {}
        has_zstd_cli = shutil.which('zstd') is not None

        def run(label: str, argv, shell: bool = False) -> None:
            if os.path.exists(dst):
                os.unlink(dst)
            prime_memory(size + min(size, 256 * MiB))
            wall, cpu, _ = timed(argv, shell=shell)
            samples.setdefault(label, []).append((size / wall, cpu / (size / GiB)))
            if os.path.exists(dst):
                os.unlink(dst)

        warmup = 0 if args.no_warmup else 1
        for round_no in range(args.rounds + warmup):
            if warmup and round_no == 1:
                samples.clear()     # round 0 warms up
            samples.setdefault('hashlib', []).append(
                (hashlib_speed(min(256 * MiB, max(size, 64 * MiB))), 0.0))
            for kind in ('plain', 'zstd', 'gzip'):
                before = nginx_bytes_sent(nginx, names[kind])
                run(kind, [PY, '-c', COPY, urls[kind], dst, f'sha512:{digest}', kind])
                sent[kind] = nginx_bytes_sent(nginx, names[kind]) - before
            if has_zstd_cli:
                run('curl | zstd -d | sha512sum',
                    f'curl -sf {urls["zstd"]} | zstd -dq | sha512sum >/dev/null',
                    shell=True)
        rows = {k: (statistics.median(t for t, _ in v), statistics.median(c for _, c in v))
                for k, v in samples.items()}
        hash_speed = rows.pop('hashlib')[0]

        # Resume: cut the zstd copy at half its compressed bytes.
        comp_size = outs['zstd'].compressed_size
        frames = frame_sizes(work / 'image.raw.zst')
        proxy = CutProxy(nginx.port, comp_size // 2)
        proxy.start()
        _, _, proc = timed([PY, '-c', COPY,
                            f'http://127.0.0.1:{proxy.port}/image.raw.zst', dst,
                            f'sha512:{digest}', 'zstd'])
        os.unlink(dst)
        resumed_at = [int(r.split('=')[1].split('-')[0]) for r in proxy.resume_ranges
                      if r.startswith('bytes=')]
        twice = proxy.body_before_cut - resumed_at[0] if resumed_at else None

        print(f'\ncompressed copy benchmark: {args.size_mib} MiB raw ext4 holding '
              f'{used / MiB:.0f} MiB of real files (virtualenv, stdlib, /usr/lib), '
              f'sha512, sparse; {os.cpu_count()} CPUs, hashlib sha512 '
              f'{hash_speed / MiB:.0f} MiB/s; medians of {args.rounds} interleaved '
              f'rounds')
        for codec, out in outs.items():
            print(f'  {codec}: {out.compressed_size} bytes, ratio '
                  f'{size / out.compressed_size:.2f}, {out.frames} frames of '
                  f'{args.frame_mib} MiB')
        print(f'\n{"run":<30}{"MiB/s":>8}{"CPU s/GiB":>11}{"bytes sent":>14}')
        for kind, (tp, cpu) in rows.items():
            print(f'{kind:<30}{tp / MiB:>8.0f}{cpu:>11.2f}{sent.get(kind, 0):>14}')
        plain_tp, plain_cpu = rows['plain']
        print('\nratios (goal in brackets):')
        for codec in ('zstd', 'gzip'):
            tp, cpu = rows[codec]
            goal = ' [>= 0.8]' if codec == 'zstd' else ''
            met = '' if codec != 'zstd' else (' MET' if tp >= 0.8 * plain_tp
                                               else ' MISSED')
            print(f'  {codec} / plain: throughput {tp / plain_tp:.2f}{goal}{met}, CPU '
                  f'{cpu / plain_cpu:.2f}; bytes sent {sent[codec]} = compressed size '
                  f'{outs[codec].compressed_size}: '
                  f'{"MET" if sent[codec] == outs[codec].compressed_size else "MISSED"}')
        zstd_tp = rows['zstd'][0]
        print(f'  derived, not measured: on a link slower than {zstd_tp / MiB:.0f} MiB/s '
              f'({zstd_tp * 8 / 1e6:.0f} Mbit/s, the zstd copy\'s own rate here) the '
              f'zstd copy is the faster one: it needs {size / comp_size:.2f}x fewer '
              f'bytes from the link')
        if has_zstd_cli:
            base_cpu = rows['curl | zstd -d | sha512sum'][1]
            print(f'  zstd copy CPU / curl|zstd -d|sha512sum CPU: '
                  f'{rows["zstd"][1] / base_cpu:.2f}')
        if twice is None:
            print(f'  resume after a cut at 50 %: MISSED, no Range request after the cut '
                  f'({proxy.connections} connections)')
        else:
            print(f'  resume after a cut at 50 % (compressed byte {proxy.body_before_cut}):'
                  f' asked for {proxy.resume_ranges[0]}: {twice} bytes fetched twice; '
                  f'largest frame {max(frames)} [<= one frame] '
                  f'{"MET" if 0 <= twice <= max(frames) else "MISSED"}; copy: bytes '
                  f'written, retries, resumed_from, compressed bytes read = '
                  f'{proc.stdout.strip()}')
        sys.stdout.flush()
        ratio_rows = []
        if not args.no_frame_table:
            for frame in (1, 4, 8, 16, 0):
                out = work / f'ratio-{frame}.zst'
                compress_image.compress(str(image), str(out), 'zstd',
                                        frame * MiB if frame else min(size, GiB))
                ratio_rows.append((frame, out.stat().st_size))
                out.unlink()

        if ratio_rows:
            print('\nzstd level 3 ratio by frame size (what resumability costs):')
            single = ratio_rows[-1][1]
            for frame, n in ratio_rows:
                what = (f'{frame} MiB frames' if frame else 'one frame' if size <= GiB
                        else '1 GiB frames')       # pyzstd's largest frame
                print(f'  {what:<16}{n:>14} bytes  ratio {size / n:6.2f}  '
                      f'{n / single:.3f} x one frame')
    finally:
        nginx.stop()
        shutil.rmtree(work, ignore_errors=True)
        if own_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    print('every file created was removed; nginx stopped')
    return 0


if __name__ == '__main__':
    sys.exit(main())
