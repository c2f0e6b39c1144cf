"""Seeded fault trials of the copy engine against the lab's nginx, through a fault
proxy (tools/lab/fault_proxy.py): connection reset, stall, truncation,
corruption, slow drip, HTTP 503, a wrong Content-Length, a Range answered with
another Content-Range, each at a random body offset.

    .venv/bin/python -m tools.fault_trials [--trials 50] [--seed 1] [--kinds reset,stall]

Every trial copies one image (random bytes with holes) with the engine's real
retry and resume: it must end with a verified disk or a clear error and nothing
published at the target; when it errs, the same copy is asked again without the
fault and must resume and verify. Per kind it prints trials, outcomes, bytes
published wrongly (goal: none) and bytes fetched again (goal: never more than one
checkpoint interval). Exit 1 when a goal is missed. Starts and stops its own
nginx under IH_LAB_RUN_DIR.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from image_handlers import exceptions  # noqa: E402
from image_handlers.copy import Checksum, CopyOptions, copy  # noqa: E402
from tools.lab.fault_proxy import KINDS, Fault, FaultProxy  # noqa: E402
from tools.lab.nginx import NginxService  # noqa: E402

MiB = 1 << 20
CHECKPOINT = 1 * MiB


@dataclasses.dataclass
class Trial:
    kind: str
    seed: int
    offset: int
    first: str                  # 'verified' or the error type
    error: str = ''
    recovered: bool | None = None   # after an error: the next copy verified
    wrongly_published: int = 0  # bytes at the target that are not the image's
    # Bytes the copy that published received twice (its resume point plus what it
    # received, less the image): a reset costs at most the bytes in flight.
    refetched: int = 0
    sent_extra: int = 0         # bytes the proxy wrote beyond the image, all runs
                                # (counts what sat in socket buffers when cut)
    seconds: float = 0.0


def image(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += bytes(64 * 1024) if rng.random() < 0.3 else rng.randbytes(64 * 1024)
    return bytes(out[:size])


def options() -> CopyOptions:
    return CopyOptions(buffer_size=256 * 1024, checkpoint_interval=CHECKPOINT,
                       retries=3, retry_backoff=0.01, retry_backoff_max=0.05,
                       connect_timeout=2.0, read_timeout=1.0)


def plan_for(kind: str, offset: int, size: int):
    """The fault on the first request; for 'range', a reset first so the second
    request is a ranged one, and that one gets the wrong Content-Range."""
    def plan(number: int, line: str):
        if kind == 'range':
            if number == 0:
                return Fault('reset', offset)
            return Fault('range') if number == 1 else None
        if number != 0:
            return None
        if kind == 'length':
            return Fault('length', 1 + offset % 4096)
        if kind == 'stall':
            return Fault('stall', offset, stall=1.5)
        return Fault(kind, offset)
    return plan


def run_trial(nginx: NginxService, work: str, kind: str, seed: int,
              data: bytes, url_path: str, checksum: Checksum) -> Trial:
    rng = random.Random(hash((kind, seed)) & 0xFFFFFFFF)
    offset = rng.randrange(1, len(data) - 1)
    proxy = FaultProxy(nginx.base_url, plan_for(kind, offset, len(data))).start()
    target = os.path.join(work, f'{kind}-{seed}.raw')
    trial = Trial(kind, seed, offset, 'verified')
    started = time.monotonic()
    result = None
    try:
        try:
            result = copy(proxy.url_for(url_path), target, checksum=checksum,
                          expected_size=len(data), options=options()).wait(120)
        except exceptions.ImageHandlerError as exc:
            trial.first, trial.error = type(exc).__name__, str(exc)[:200]
            if os.path.exists(target):
                trial.wrongly_published += os.path.getsize(target)
            proxy.plan = lambda n, line: None
            try:
                result = copy(proxy.url_for(url_path), target, checksum=checksum,
                              expected_size=len(data), options=options()).wait(120)
                trial.recovered = True
            except exceptions.ImageHandlerError as again:
                trial.recovered = False
                trial.error += f' | then: {type(again).__name__}: {again}'[:200]
        if os.path.exists(target):
            with open(target, 'rb') as f:
                got = f.read()
            if got != data:
                trial.wrongly_published += len(got)
        if result is not None:
            trial.refetched = max(0, result.resumed_from + result.bytes_transferred
                                  - len(data))
        trial.sent_extra = max(0, proxy.body_bytes - len(data))
    finally:
        proxy.stop()
        trial.seconds = time.monotonic() - started
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))
    return trial


def summarise(trials: list[Trial]) -> dict:
    by_kind = collections.defaultdict(list)
    for t in trials:
        by_kind[t.kind].append(t)
    report = {}
    for kind, rows in by_kind.items():
        outcomes = collections.Counter(t.first for t in rows)
        errored = [t for t in rows if t.first != 'verified']
        report[kind] = {
            'trials': len(rows), 'outcomes': dict(outcomes),
            'recovered_after_error': sum(1 for t in errored if t.recovered),
            'not_recovered': sum(1 for t in errored if not t.recovered),
            'wrongly_published_bytes': sum(t.wrongly_published for t in rows),
            'refetched_max': max(t.refetched for t in rows),
            'refetched_total': sum(t.refetched for t in rows),
            'sent_extra_max': max(t.sent_extra for t in rows),
            'seconds': round(sum(t.seconds for t in rows), 1)}
    return report


def goals_met(report: dict) -> list[str]:
    missed = []
    for kind, r in report.items():
        if r['wrongly_published_bytes']:
            missed.append(f'{kind}: {r["wrongly_published_bytes"]} bytes published wrongly')
        if r['not_recovered']:
            missed.append(f'{kind}: {r["not_recovered"]} trials did not recover')
        if r['refetched_max'] > CHECKPOINT:
            missed.append(f'{kind}: fetched {r["refetched_max"]} bytes again (more '
                          f'than one checkpoint interval, {CHECKPOINT})')
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--trials', type=int, default=50)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--kinds', default=','.join(KINDS))
    parser.add_argument('--size-mib', type=float, default=4)
    parser.add_argument('--json', help='write the report (and every trial) here')
    parser.add_argument('--verbose', action='store_true',
                        help='show the copy engine\'s warnings (every retry)')
    args = parser.parse_args(argv)
    engine_log = logging.getLogger('image_handlers')
    level = engine_log.level
    if not args.verbose:
        engine_log.setLevel(logging.ERROR)      # every retry warns: hide them
    try:
        return _run(args, parser)
    finally:
        engine_log.setLevel(level)      # main() may run inside a test session


def _run(args, parser) -> int:
    kinds = [k for k in args.kinds.split(',') if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f'unknown kinds {unknown} (known: {", ".join(KINDS)})')
    work = tempfile.mkdtemp(prefix='fault-trials-')
    nginx = NginxService(name='nginx-faults')
    trials: list[Trial] = []
    try:
        nginx.start()
        data = image(int(args.size_mib * MiB), args.seed)
        src = os.path.join(work, 'image.raw')
        with open(src, 'wb') as f:
            f.write(data)
        url_path = nginx.publish(__import__('pathlib').Path(src),
                                 f'fault-trials-{args.seed}.raw').rsplit('/', 1)[1]
        os.unlink(src)
        checksum = Checksum('sha256', hashlib.sha256(data).hexdigest())
        targets = os.path.join(work, 'targets')
        os.mkdir(targets)
        for kind in kinds:
            for n in range(args.trials):
                trials.append(run_trial(nginx, targets, kind, args.seed * 1000 + n,
                                        data, url_path, checksum))
    finally:
        nginx.stop()
        shutil.rmtree(work, ignore_errors=True)
    report = summarise(trials)
    print(f'fault trials: {args.trials} per kind, seed {args.seed}, image '
          f'{args.size_mib:g} MiB, checkpoint interval {CHECKPOINT} bytes')
    print(f'{"kind":<9} {"trials":>6}  {"outcomes (first run)":<40} {"recovered":>9} '
          f'{"wrong":>5} {"refetched max":>13} {"sent extra max":>14}')
    for kind, r in report.items():
        outcomes = ', '.join(f'{k} {v}' for k, v in sorted(r['outcomes'].items()))
        errored = r['recovered_after_error'] + r['not_recovered']
        print(f'{kind:<9} {r["trials"]:>6}  {outcomes:<40} '
              f'{r["recovered_after_error"]:>4}/{errored:<4} '
              f'{r["wrongly_published_bytes"]:>5} {r["refetched_max"]:>13} '
              f'{r["sent_extra_max"]:>14}')
    missed = goals_met(report)
    print('goals: ' + ('MET (nothing published wrongly, every error recovered, never '
                       'more than one checkpoint interval fetched again)'
                       if not missed else 'MISSED: ' + '; '.join(missed)))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'report': report,
                       'trials': [dataclasses.asdict(t) for t in trials]}, f, indent=1)
    return 1 if missed else 0


if __name__ == '__main__':
    sys.exit(main())
