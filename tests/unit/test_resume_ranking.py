"""Locations that resume a partial copy best go first among equals (found by
tools/kill_trials.py: a resume sent to Glance's data API, unmeasured and so tried
first, which ignores the range request, fetched the kept bytes again). Weight
and recent failures still come first: an operator's order and a broken location
are not overridden."""
from image_handlers.locations import parse_location
from image_handlers.ranking import rank_locations
from image_handlers.throughput import ThroughputStore


def _locs():
    return [parse_location('http://a/x', {}, 0),
            parse_location('http://b/x', {}, 1),
            parse_location('http://c/x', {'weight': 1}, 2)]


def test_a_resuming_location_goes_first_among_equal_weights(tmp_path):
    store = ThroughputStore(str(tmp_path))
    store.record('http://a', 400 << 20, 1.0)
    store.record('http://b', 10 << 20, 1.0)
    ranked = rank_locations(_locs(), 'cn1', store,
                            resumes=lambda loc: loc.url == 'http://b/x')
    assert [r.location.url for r in ranked] == ['http://c/x', 'http://b/x',
                                                'http://a/x']
    assert 'resumes the partial' in ranked[1].why
    assert 'resumes the partial' not in ranked[2].why


def test_a_recently_failed_resuming_location_is_not_preferred(tmp_path):
    store = ThroughputStore(str(tmp_path))
    store.record_failure('http://b')
    ranked = rank_locations(_locs(), 'cn1', store,
                            resumes=lambda loc: loc.url == 'http://b/x')
    assert [r.location.url for r in ranked] == ['http://c/x', 'http://a/x',
                                                'http://b/x']


def test_without_a_partial_the_order_is_unchanged(tmp_path):
    store = ThroughputStore(str(tmp_path))
    assert ([r.location.url for r in rank_locations(_locs(), 'cn1', store)]
            == [r.location.url for r in rank_locations(_locs(), 'cn1', store,
                                                       resumes=lambda loc: False)])
