"""Throughput and failures measured on this host, per location endpoint.

A small JSON file in ``[image_handlers] state_dir``: an exponentially weighted mean
of MiB/s per endpoint key, and a decayed failure score. They order locations of
equal weight; they are never sent to Glance, where they would be a claim any user
could influence.

Failures: each failure of a location (``blames_location``) adds 1 to its score,
which halves every ``[image_handlers] location_failure_half_life`` seconds; a
success halves it at once. A location counts as *failed recently* while its score
is above 0.5: one failure keeps it behind the healthy ones for one half-life, two
failures for two, four for three; one success right after a single failure clears
it. Stored per key as (score, at, count, last), so the file stays bounded.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Callable

from oslo_log import log as logging

from image_handlers import exceptions

LOG = logging.getLogger(__name__)

_ALPHA = 0.3  # weight of the newest sample
_MIN_BYTES = 1024 * 1024  # shorter transfers say more about latency than throughput
_RECENT = 0.5  # a failure score above this: failed recently (one failure, one half-life)
DEFAULT_HALF_LIFE = 600.0

# What a handler's act may raise that says something about the location itself:
# it could not be read (refused, timed out, HTTP error, retries exhausted), or it
# served bytes that are not the image's (wrong hash, signature or size). Not: a
# full disk, a cancelled copy, bad input, a refusal by decide.
_LOCATION_FAILURES = (exceptions.SourceError, exceptions.ChecksumMismatch,
                      exceptions.SizeMismatch, ConnectionError, TimeoutError)


def blames_location(exc: BaseException) -> bool:
    """Whether a failed act is a reason to try that location after healthy ones."""
    return isinstance(exc, _LOCATION_FAILURES)


@dataclasses.dataclass(frozen=True)
class Health:
    """What this host knows of one endpoint, as of now."""

    mib_per_s: float | None = None
    failures: int = 0                    # failures since it was last healthy
    last_failure_ago: float | None = None  # seconds
    score: float = 0.0                   # decayed failure score

    @property
    def failed_recently(self) -> bool:
        return self.score > _RECENT

    def to_dict(self) -> dict:
        return {'mib_per_s': self.mib_per_s,
                'recent_failures': self.failures if self.failed_recently else 0,
                'last_failure_seconds_ago': (None if self.last_failure_ago is None
                                             else round(self.last_failure_ago, 1)),
                'failure_score': round(self.score, 3)}


class ThroughputStore:
    def __init__(self, state_dir: str, failure_half_life: float = DEFAULT_HALF_LIFE,
                 clock: Callable[[], float] = time.time):
        self.path = os.path.join(state_dir, 'throughput.json')
        self.half_life = failure_half_life  # 0: failures are neither kept nor used
        self.clock = clock

    def load(self) -> dict[str, dict]:
        try:
            with open(self.path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            LOG.warning('ignoring unreadable throughput file %s: %s', self.path, exc)
            return {}

    def mib_per_s(self, key: str) -> float | None:
        entry = self.load().get(key)
        return float(entry['mib_s']) if entry and 'mib_s' in entry else None

    def health(self, key: str) -> Health:
        return self.health_of(self.load(), key)

    def health_of(self, data: dict, key: str) -> Health:
        """``key``'s Health from ``data`` (a ``load()``), decayed to now."""
        entry = data.get(key) or {}
        mib_s = float(entry['mib_s']) if 'mib_s' in entry else None
        failures = entry.get('failures')
        if not failures or self.half_life <= 0:
            return Health(mib_per_s=mib_s)
        now = self.clock()
        return Health(mib_per_s=mib_s, failures=int(failures.get('count', 0)),
                      last_failure_ago=max(0.0, now - float(failures['last'])),
                      score=self._decayed(failures, now))

    def _decayed(self, failures: dict, now: float) -> float:
        age = max(0.0, now - float(failures['at']))
        return float(failures['score']) * 0.5 ** (age / self.half_life)

    def record_failure(self, key: str) -> None:
        """One failure of ``key``: add 1 to its decayed score."""
        if self.half_life <= 0:
            return

        def fail(entry: dict, now: float) -> bool:
            old = entry.get('failures')
            score = self._decayed(old, now) if old else 0.0
            count = int(old.get('count', 0)) if old and score > _RECENT else 0
            entry['failures'] = {'score': round(score + 1, 6), 'at': now,
                                 'count': count + 1, 'last': now}
            return True
        self._update(key, fail)

    def record(self, key: str, nbytes: int, seconds: float) -> None:
        """One success of ``key``: fold the transfer into the mean (when it is long
        enough to say anything) and halve its failure score."""
        sample = (nbytes / (1024 * 1024) / seconds
                  if nbytes >= _MIN_BYTES and seconds > 0 else None)
        if sample is None and not (self.load().get(key) or {}).get('failures'):
            return  # nothing to change: don't take the lock for every zero-copy run

        def succeed(entry: dict, now: float) -> bool:
            changed = False
            if sample is not None:
                old = entry.get('mib_s')
                mean = sample if old is None else _ALPHA * sample + (1 - _ALPHA) * old
                entry['mib_s'] = round(mean, 3)
                entry['samples'] = entry.get('samples', 0) + 1
                entry['updated'] = int(now)
                changed = True
            failures = entry.get('failures')
            if failures:
                score = self._decayed(failures, now) / 2 if self.half_life > 0 else 0
                if score > _RECENT:
                    failures.update(score=round(score, 6), at=now)
                else:
                    del entry['failures']  # healthy again: forget the count
                changed = True
            return changed
        self._update(key, succeed)

    def _update(self, key: str, change: Callable[[dict, float], bool]) -> None:
        """Apply ``change`` to ``key``'s entry under the lock; failures to save
        are only logged."""
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path + '.lock', 'w') as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                data = self.load()
                entry = dict(data.get(key) or {})
                if not change(entry, self.clock()):
                    return
                data[key] = entry
                tmp = f'{self.path}.{os.getpid()}.tmp'
                with open(tmp, 'w') as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
        except OSError as exc:
            LOG.warning('could not save throughput to %s: %s', self.path, exc)
