"""Throughput measured on this host, per location endpoint, kept on this host.

A small JSON file in ``[image_handlers] state_dir``: an exponentially weighted mean
of MiB/s per endpoint key. It orders locations of equal weight; it is never sent to
Glance, where it would be a claim any user could influence.
"""
from __future__ import annotations

import fcntl
import json
import os
import time

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

_ALPHA = 0.3  # weight of the newest sample
_MIN_BYTES = 1024 * 1024  # shorter transfers say more about latency than throughput


class ThroughputStore:
    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, 'throughput.json')

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
        return float(entry['mib_s']) if entry else None

    def record(self, key: str, nbytes: int, seconds: float) -> None:
        """Fold one transfer into the mean; failures to save are only logged."""
        if nbytes < _MIN_BYTES or seconds <= 0:
            return
        sample = nbytes / (1024 * 1024) / seconds
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path + '.lock', 'w') as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                data = self.load()
                old = data.get(key)
                mean = sample if not old else (
                    _ALPHA * sample + (1 - _ALPHA) * float(old['mib_s']))
                data[key] = {'mib_s': round(mean, 3),
                             'samples': (old or {}).get('samples', 0) + 1,
                             'updated': int(time.time())}
                tmp = f'{self.path}.{os.getpid()}.tmp'
                with open(tmp, 'w') as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
        except OSError as exc:
            LOG.warning('could not save throughput to %s: %s', self.path, exc)
