"""The token bucket's arithmetic, on a fake clock: no real time is involved."""
import pytest

from image_handlers.copy.ratelimit import TokenBucket


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_average_rate_is_exact_after_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)    # burst = 1000
    for _ in range(100):
        bucket.consume(100)                 # 10,000 bytes
    # the first 1000 bytes pass on the initial burst, 9000 at 1000 B/s
    assert clock.now - 100.0 == pytest.approx(9.0)
    assert bucket.slept == pytest.approx(9.0)


def test_idle_time_refills_up_to_the_burst_only():
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=500, clock=clock, sleep=clock.sleep)
    assert bucket.consume(500) == 0.0
    clock.now += 60.0                       # a long pause earns at most `burst`
    assert bucket.consume(500) == 0.0
    assert bucket.consume(250) == pytest.approx(0.25)


def test_one_large_read_pays_its_debt_at_once():
    clock = FakeClock()
    bucket = TokenBucket(1 << 20, burst=0, clock=clock, sleep=clock.sleep)
    assert bucket.consume(8 << 20) == pytest.approx(8.0)
    assert bucket.consume(1 << 20) == pytest.approx(1.0)


def test_slices_are_a_tenth_of_a_second_within_bounds():
    assert TokenBucket(10 << 20).slice_size(8 << 20) == 1 << 20
    assert TokenBucket(1000).slice_size(8 << 20) == 64 << 10
    assert TokenBucket(1 << 40).slice_size(8 << 20) == 8 << 20


def test_rate_must_be_positive():
    with pytest.raises(ValueError):
        TokenBucket(0)
