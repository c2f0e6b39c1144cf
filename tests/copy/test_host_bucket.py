"""The host-wide bandwidth limit's arithmetic (ratelimit.host_bucket), on a fake
clock: several copies' buckets share one state, so together they get the rate once,
not once each. (The same limit against real copies and a real server, threads and
processes: tests/functional/test_load.py.)"""
import os
import struct

import pytest

from image_handlers.copy import ratelimit
from image_handlers.copy.ratelimit import host_bucket


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def _views(n, state_dir, clock, rate=1000):
    buckets = [host_bucket(rate, state_dir, sleep=clock.sleep) for _ in range(n)]
    for b in buckets:
        b._clock = clock
    return buckets


@pytest.mark.parametrize('shared_file', [True, False])
def test_copies_share_one_rate(tmp_path, shared_file, monkeypatch):
    monkeypatch.setattr(ratelimit, '_process_tat', [0.0])
    clock = FakeClock()
    buckets = _views(4, str(tmp_path / 'locks') if shared_file else None, clock)
    for _ in range(25):
        for b in buckets:
            b.consume(100)                  # 4 copies x 2500 bytes = 10,000 bytes
    # one burst (1000 bytes) for the host, then 9000 bytes at 1000 B/s in all:
    # four per-copy buckets would have let it pass in 1.5 s
    assert clock.now - 100.0 == pytest.approx(9.0)
    assert sum(b.slept for b in buckets) == pytest.approx(9.0)
    if shared_file:
        assert os.listdir(tmp_path / 'locks') == [ratelimit.STATE_FILE]


def test_separate_state_dirs_are_separate_limits(tmp_path):
    clock = FakeClock()
    a, = _views(1, str(tmp_path / 'a'), clock)
    b, = _views(1, str(tmp_path / 'b'), clock)
    assert a.consume(1000) == 0.0 and b.consume(1000) == 0.0   # a burst each
    assert a.consume(500) == pytest.approx(0.5)


def test_a_stale_state_from_before_a_reboot_is_reset(tmp_path):
    """The monotonic clock restarts at boot: a time far ahead of it is not a debt."""
    clock = FakeClock()
    locks = tmp_path / 'locks'
    locks.mkdir()
    (locks / ratelimit.STATE_FILE).write_bytes(struct.pack('=d', 1e9))
    bucket, = _views(1, str(locks), clock)
    assert bucket.consume(500) == 0.0


def test_idle_host_refills_only_up_to_the_burst(tmp_path):
    clock = FakeClock()
    bucket, = _views(1, str(tmp_path), clock)
    assert bucket.consume(1000) == 0.0
    clock.now += 60.0
    assert bucket.consume(1000) == 0.0
    assert bucket.consume(250) == pytest.approx(0.25)
