from image_handlers.locations import parse_location
from image_handlers.ranking import rank_locations
from image_handlers.throughput import ThroughputStore


def _locs():
    return [parse_location('http://a/x', {}, 0),
            parse_location('http://b/x', {'weight': 1}, 1),
            parse_location('http://c/x', {'host_weights': {'cn1': 5}}, 2),
            parse_location('http://d/x', {}, 3)]


def test_weights_then_glance_order():
    order = [r.location.url for r in rank_locations(_locs(), 'cn1', None)]
    assert order == ['http://c/x', 'http://b/x', 'http://a/x', 'http://d/x']
    order = [r.location.url for r in rank_locations(_locs(), 'cn2', None)]
    assert order == ['http://b/x', 'http://a/x', 'http://c/x', 'http://d/x']


def test_measured_throughput_orders_equal_weights(tmp_path):
    store = ThroughputStore(str(tmp_path))
    store.record('http://a', 100 << 20, 1.0)    # 100 MiB/s
    store.record('http://d', 400 << 20, 1.0)    # 400 MiB/s
    ranked = rank_locations(_locs(), 'cn2', store)
    # b has weight 1; c never measured (tried before measured ones); then d beats a
    assert [r.location.url for r in ranked] == ['http://b/x', 'http://c/x',
                                                'http://d/x', 'http://a/x']
    assert '400 MiB/s' in ranked[2].why and 'not measured' in ranked[1].why


def test_throughput_mean_and_small_transfers_ignored(tmp_path):
    store = ThroughputStore(str(tmp_path))
    store.record('k', 100, 0.001)  # too small to say anything
    assert store.mib_per_s('k') is None
    store.record('k', 100 << 20, 1.0)
    store.record('k', 200 << 20, 1.0)
    assert abs(store.mib_per_s('k') - (0.3 * 200 + 0.7 * 100)) < 0.01
    assert store.load()['k']['samples'] == 2


class Clock:
    """A clock the test moves: no sleeps."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_failures_are_recorded_and_decay_with_the_half_life(tmp_path):
    clock = Clock()
    store = ThroughputStore(str(tmp_path), failure_half_life=600, clock=clock)
    assert not store.health('http://a').failed_recently
    store.record_failure('http://a')
    clock.now += 40
    store.record_failure('http://a')
    h = store.health('http://a')
    assert h.failed_recently and h.failures == 2 and h.last_failure_ago == 0
    assert abs(h.score - (1 + 0.5 ** (40 / 600))) < 1e-6
    clock.now += 600
    assert abs(store.health('http://a').score - h.score / 2) < 1e-6
    clock.now += 600  # two half-lives after two failures: 0.48, healthy again
    h = store.health('http://a')
    assert not h.failed_recently and h.to_dict()['recent_failures'] == 0
    store.record_failure('http://a')  # counted afresh, not as the third
    assert store.health('http://a').failures == 1
    assert store.mib_per_s('http://a') is None  # failures alone are not a speed


def test_a_success_halves_the_failure_score(tmp_path):
    clock = Clock()
    store = ThroughputStore(str(tmp_path), failure_half_life=600, clock=clock)
    for _ in range(3):
        store.record_failure('k')
    store.record('k', 0, 0.1)          # a zero-copy success: halves, no sample
    h = store.health('k')
    assert h.score == 1.5 and h.failed_recently and h.mib_per_s is None
    store.record('k', 100 << 20, 1.0)  # a copy: measured, and halved again
    h = store.health('k')
    assert h.mib_per_s == 100 and h.score == 0.75 and h.failed_recently
    store.record('k', 0, 0.1)          # 0.375: healthy
    assert not store.health('k').failed_recently
    assert 'failures' not in store.load()['k']  # healthy again: forgotten


def test_half_life_zero_keeps_no_failures(tmp_path):
    store = ThroughputStore(str(tmp_path), failure_half_life=0)
    store.record_failure('k')
    assert not store.health('k').failed_recently and store.load() == {}


def test_which_failures_blame_the_location():
    from image_handlers import exceptions
    from image_handlers.throughput import blames_location
    assert blames_location(exceptions.SourceError('HTTP 500'))
    assert blames_location(exceptions.RetriesExhausted('gave up'))
    assert blames_location(exceptions.ChecksumMismatch('sha512 differs'))
    assert blames_location(exceptions.SizeMismatch('short'))
    assert blames_location(ConnectionRefusedError(111, 'refused'))
    assert blames_location(TimeoutError('timed out'))
    assert not blames_location(exceptions.DiskFull('ENOSPC'))
    assert not blames_location(exceptions.CopyCancelled('cancelled'))
    assert not blames_location(exceptions.InvalidTarget('bad'))
    assert not blames_location(OSError(5, 'local I/O error'))


def test_recently_failed_locations_rank_after_healthy_ones_of_equal_weight(tmp_path):
    clock = Clock()
    store = ThroughputStore(str(tmp_path), failure_half_life=600, clock=clock)
    store.record('http://a', 100 << 20, 1.0)
    store.record('http://d', 400 << 20, 1.0)
    store.record_failure('http://d')
    store.record_failure('http://d')
    store.record_failure('http://b')   # weight 1: still first, weight wins
    clock.now += 40
    ranked = rank_locations(_locs(), 'cn2', store)
    assert [r.location.url for r in ranked] == ['http://b/x', 'http://c/x',
                                                'http://a/x', 'http://d/x']
    assert ('failed 2x recently, last 40 s ago: tried after healthy ones'
            in ranked[3].why and '400 MiB/s' in ranked[3].why)
    assert 'failed' not in ranked[2].why
    details = ranked[3].details()
    assert details['mib_per_s'] == 400 and details['recent_failures'] == 2
    assert details['last_failure_seconds_ago'] == 40 and details['weight'] == 0
    clock.now += 1200  # decayed: d is healthy and fastest again
    ranked = rank_locations(_locs(), 'cn2', store)
    assert [r.location.url for r in ranked][2:] == ['http://d/x', 'http://a/x']


def test_failures_order_even_without_throughput_preference(tmp_path):
    store = ThroughputStore(str(tmp_path), clock=Clock())
    store.record('http://d', 400 << 20, 1.0)
    store.record_failure('http://a')
    ranked = rank_locations(_locs(), 'cn2', store, use_throughput=False)
    # b (weight 1); then Glance order, a last for its failure, speed not used
    assert [r.location.url for r in ranked] == ['http://b/x', 'http://c/x',
                                                'http://d/x', 'http://a/x']
    assert 'not used: prefer_measured_throughput is off' in ranked[2].why
