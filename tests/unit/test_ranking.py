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
