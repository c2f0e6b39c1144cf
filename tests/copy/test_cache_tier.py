"""stream_copy through a cache tier (issue 13): a real squid in front of the lab's
nginx, and what a cache may get wrong.

Where the exact request a cache receives matters (absolute URI, Host, no token,
If-Range), or a cache must misbehave in a way squid will not (200 to a Range), the
"cache" is tests/copy/fault_server.py answering the absolute-URI request a client
sends to a proxy: a real HTTP server in the proxy's place, named so in each test.
"""
from __future__ import annotations

import os
import re
import threading
import time

import pytest

from image_handlers import exceptions
from image_handlers.copy import HttpSource, copy
from image_handlers.copy.cache_tier import CacheRoute
from tests.copy.conftest import MiB, make_image
from tests.copy.helpers import checkpoint_offset, partial_of, sha512, wait_for
from tools.lab.nginx import NginxService
from tools.lab.squid import SquidService

ORIGIN = 'http://origin.invalid:8080/images/disk'   # never resolved: the proxy is asked


@pytest.fixture(scope='module')
def origin():
    svc = NginxService(name='nginx-cache-tier').start()
    yield svc
    svc.stop()


@pytest.fixture(scope='module')
def squid():
    svc = SquidService(name='squid-cache-tier', cache_mem_mb=128).start()
    yield svc
    svc.stop()


def _publish(origin: NginxService, name: str, data: bytes) -> str:
    """Atomic replace of a file on the origin, as an image server does."""
    tmp = origin.docroot / f'.{name}.tmp'
    tmp.write_bytes(data)
    os.replace(tmp, origin.docroot / name)
    return origin.url_for(name)


def _origin_gets(origin: NginxService, name: str) -> list[str]:
    log = (origin.workdir / 'access.log').read_text().splitlines()
    return [line for line in log if f'GET /{name} ' in line]


def _logged(squid: SquidService, match, count: int) -> list[str]:
    """squid's log lines that ``match``, waiting (bounded) until ``count`` are there:
    squid logs a request when it has ended, a moment after the client has its bytes."""
    deadline = time.monotonic() + 15
    while True:
        lines = [line for line in squid.log_lines() if match(line)]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_many_hosts_one_origin_fetch_through_squid(origin, squid, options, tmp_path):
    """Four copies at once through squid: collapsed forwarding makes it one GET at
    the origin; every copy is hash-checked."""
    data = make_image(8 * MiB + 777, seed=21)
    url = _publish(origin, 'fleet.raw', data)
    results, errors = [], []

    def one(i: int) -> None:
        try:
            source = HttpSource(url, proxy=squid.proxy_url)
            results.append(copy(source, str(tmp_path / f'host{i}'),
                                checksum=sha512(data), options=options).wait(60))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert len(results) == 4 and all(r.size == len(data) for r in results)
    for i in range(4):
        assert (tmp_path / f'host{i}').read_bytes() == data
    assert len(_origin_gets(origin, 'fleet.raw')) == 1, _origin_gets(origin, 'fleet.raw')
    served = _logged(squid, lambda line: url in line, 4)
    assert len(served) == 4, served
    # One went to the origin; the others were collapsed onto it (TCP_CF_MISS) or hit.
    assert sum('HIER_DIRECT' in line for line in served) == 1, served
    assert all(re.search(r' GET http://127\.0\.0\.1:\d+/fleet\.raw ', line)
               for line in served), served   # the same cache key for every host


def test_request_form_to_a_cache(servers, options, image, tmp_path):
    """What a proxy receives (a fault server in the proxy's place): the absolute URI
    without credentials, the origin's Host, no token, Range with If-Range on the
    resume, no query added."""
    cache = servers(image, path=ORIGIN)
    cache.faults.close_after = 2 * MiB
    source = HttpSource('http://u:secret@origin.invalid:8080/images/disk',
                        headers={'X-Auth-Token': 'token'}, proxy=cache.url_for(''))
    assert 'via cache' in source.description and 'secret' not in source.description
    result = copy(source, str(tmp_path / 'disk'), checksum=sha512(image),
                  options=options).wait(60)
    assert result.retries == 1
    first, resumed = cache.requests
    for req in (first, resumed):
        assert req.path == ORIGIN
        assert req.headers['Host'] == 'origin.invalid:8080'
        assert 'X-Auth-Token' not in req.headers and 'Authorization' not in req.headers
    assert 'Range' not in first.headers
    assert resumed.headers['Range'] == f'bytes={2 * MiB}-'
    assert resumed.headers['If-Range'] == cache.etag   # a changed object is not spliced


def test_auth_goes_to_a_cache_only_when_the_operator_says_so(servers, options, image,
                                                            tmp_path):
    cache = servers(image, path=ORIGIN)
    source = HttpSource(ORIGIN, headers={'X-Auth-Token': 'token'},
                        proxy=cache.url_for(''), proxy_gets_auth=True)
    copy(source, str(tmp_path / 'disk'), checksum=sha512(image), options=options).wait(60)
    assert cache.requests[0].headers['X-Auth-Token'] == 'token'


def test_cache_answering_200_to_a_range_restarts_from_zero(servers, options, image,
                                                          tmp_path):
    """A cache that ignores Range (a fault server in the proxy's place) sends the
    whole object: the partial is discarded and the copy is the whole object again,
    hash-checked, not a splice."""
    cache = servers(image, path=ORIGIN)
    cache.faults.close_after = 3 * MiB
    cache.faults.ignore_range = True
    source = HttpSource(ORIGIN, proxy=cache.url_for(''))
    result = copy(source, str(tmp_path / 'disk'), checksum=sha512(image),
                  options=options).wait(60)
    assert result.restarts_from_zero == 1
    assert result.bytes_transferred == 3 * MiB + len(image)
    assert cache.requests[1].headers['Range'] == f'bytes={3 * MiB}-'
    assert cache.requests[1].status == 200
    assert (tmp_path / 'disk').read_bytes() == image


def test_resume_through_squid_reads_only_the_rest(squid, servers, options, tmp_path):
    """A copy stopped half way is resumed through the cache: squid answers the ranged
    GET (If-Range with the origin's ETag) with 206 from the object it went on
    fetching; the origin (a fault server that stalls the first response at 2 MiB)
    is asked once."""
    data = make_image(6 * MiB + 5, seed=22)
    origin = servers(data, path='/resume.raw')
    origin.faults.pause_after = 2 * MiB
    target = str(tmp_path / 'disk')
    first = copy(HttpSource(origin.url, proxy=squid.proxy_url), target,
                 checksum=sha512(data), options=options)
    wait_for(lambda: first.progress[0] >= 2 * MiB, 'the first 2 MiB through squid')
    first.cancel()
    with pytest.raises(exceptions.CopyCancelled):
        first.wait(30)
    assert os.path.exists(partial_of(target)) and not os.path.exists(target)
    kept = checkpoint_offset(target)
    assert kept and kept >= 2 * MiB
    origin.resume.set()
    result = copy(HttpSource(origin.url, proxy=squid.proxy_url), target,
                  checksum=sha512(data), options=options).wait(60)
    assert result.resumed_from == kept
    assert result.bytes_transferred == len(data) - kept
    assert open(target, 'rb').read() == data
    ranged = _logged(squid, lambda line: origin.url in line and '/206 ' in line, 1)
    assert ranged, squid.log_lines()
    assert len(origin.requests) == 1, [(r.path, r.headers.get('Range'))
                                       for r in origin.requests]


def test_stale_object_in_the_cache_is_caught_by_the_hash(origin, squid, options,
                                                        tmp_path):
    """The origin's object changed after squid cached it (squid keeps it fresh for an
    hour): the copy through the cache fails the hash, publishes nothing and leaves
    no partial; a direct read gets the right bytes."""
    old, new = make_image(4 * MiB, seed=23), make_image(4 * MiB, seed=24)
    url = _publish(origin, 'stale.raw', old)
    assert squid.get(url)[1] == old
    _publish(origin, 'stale.raw', new)
    target = str(tmp_path / 'disk')
    with pytest.raises(exceptions.ChecksumMismatch, match='nothing was published'):
        copy(HttpSource(url, proxy=squid.proxy_url), target, checksum=sha512(new),
             options=options).wait(60)
    assert not os.path.exists(target) and not os.path.exists(partial_of(target))
    copy(HttpSource(url), target, checksum=sha512(new), options=options).wait(60)
    assert open(target, 'rb').read() == new


def test_truncated_object_in_the_cache_is_refused_by_size(origin, squid, options,
                                                         tmp_path):
    """squid cached the object while it was shorter (a half-written upload on the
    origin): the copy through the cache fails on the size, nothing is published."""
    full = make_image(5 * MiB, seed=25)
    url = _publish(origin, 'short.raw', full[:2 * MiB])
    assert len(squid.get(url)[1]) == 2 * MiB
    _publish(origin, 'short.raw', full)
    target = str(tmp_path / 'disk')
    with pytest.raises(exceptions.SizeMismatch):
        copy(HttpSource(url, proxy=squid.proxy_url), target, checksum=sha512(full),
             expected_size=len(full), options=options).wait(60)
    assert not os.path.exists(target) and not os.path.exists(partial_of(target))
    copy(HttpSource(url), target, checksum=sha512(full), expected_size=len(full),
         options=options).wait(60)              # what the chain's next location does
    assert open(target, 'rb').read() == full


def test_https_origin_cannot_go_through_a_cache():
    with pytest.raises(exceptions.InvalidLocation, match='cannot read inside TLS'):
        HttpSource('https://origin.invalid/images/disk', proxy='http://127.0.0.1:3128')
    with pytest.raises(exceptions.InvalidLocation, match='without a path'):
        HttpSource(ORIGIN, proxy='http://127.0.0.1:3128/x')


@pytest.mark.parametrize('text, why', [
    ('locations=*', 'exactly one of proxy= and mirror='),
    ('proxy=http://a:1 mirror=http://b/ ', 'exactly one of proxy= and mirror='),
    ('proxy=ftp://a:1', 'is not an http'),
    ('proxy=http://a:1/path', 'has a path'),
    ('mirror=http://m/images', 'must end with "/"'),
    ('mirror=http://m/images/', 'a mirror needs locations='),
    ('mirror=http://m/i/ locations=http://o/*/x*', 'prefixes ending in one'),
    ('proxy=http://a:1 weight=ten', 'is not an integer'),
    ('proxy=http://a:1 direct=maybe', 'say yes or no'),
    ('mirror=http://m/ locations=http://o/* glance=yes', 'needs a proxy='),
    ('proxy=http://a:1 colour=blue', 'is not one of'),
    ('proxy=http://a:1 proxy=http://b:2', 'given twice'),
    ('proxy="http://a:1', 'No closing quotation'),
])
def test_bad_http_cache_entries_are_named(text, why):
    with pytest.raises(exceptions.BadInput, match=re.escape(why)) as err:
        CacheRoute.parse(text, 2)
    assert 'http_cache entry 3' in str(err.value)


def test_routes_match_host_groups_and_mirror_prefixes():
    route = CacheRoute.parse('name=r1 mirror=http://m.r1/img/ hosts=rack1-*,spare '
                             'locations=http://origin/images/*', 0)
    assert route.serves_host('rack1-n7') and route.serves_host('spare')
    assert not route.serves_host('rack2-n1')
    assert route.mirrored_url('http://origin/images/a/b.raw') == 'http://m.r1/img/a/b.raw'
    assert not route.matches('http://other/images/x')


def test_cache_locations_per_route():
    """Which locations a route adds on a host (no service involved: routes and
    locations are plain data)."""
    from image_handlers.copy.cache_tier import cache_locations, direct_refused_by
    from image_handlers.locations import GlanceApiLocation, HttpLocation
    plain = HttpLocation.from_url('http://origin/images/a.raw',
                                  {'weight': 3, 'host_weights': {'r1-n1': 7}}, index=0)
    tls = HttpLocation.from_url('https://origin/images/b.raw', index=1)
    glance = GlanceApiLocation.for_image('http://glance:9292', 'img', 0, index=2)
    routes = [CacheRoute.parse('name=c1 proxy=http://sq1:3128 hosts=r1-*', 0),
              CacheRoute.parse('name=g proxy=http://sq2:3128 weight=9 glance=yes '
                               'locations=http://glance:9292/*', 1),
              CacheRoute.parse('name=m mirror=http://m/img/ locations=https://origin/images/* '
                               'direct=no', 2)]
    found = {(loc.route.name, loc.served.index): loc
             for loc in cache_locations(routes, 'r1-n1', [plain, tls, glance])}
    assert sorted(found) == [('c1', 0), ('g', 2), ('m', 1)]   # no https via a proxy
    assert found[('c1', 0)].weight_for('r1-n1') == 8      # the served per-host weight + 1
    assert found[('c1', 0)].url == plain.url              # a proxy asks for the origin URL
    assert found[('c1', 0)].endpoint_key == 'http-cache:http://sq1:3128'
    assert found[('g', 2)].weight_for('r1-n1') == 9
    assert found[('m', 1)].url == 'http://m/img/b.raw'
    assert found[('m', 1)].display == 'https://origin/images/b.raw via mirror m'
    assert [loc.route.name for loc in cache_locations(routes, 'r2-n1', [plain])] == []
    assert direct_refused_by(routes, 'r2-n1', tls).name == 'm'
    assert direct_refused_by(routes, 'r2-n1', plain) is None
