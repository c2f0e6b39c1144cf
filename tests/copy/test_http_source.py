"""HttpSource: redirects, credentials, headers, TLS and protocol checks."""
from __future__ import annotations

import base64
import ssl

import pytest

from image_handlers import exceptions
from image_handlers.copy import CopyOptions, HttpSource, copy
from tests.copy.conftest import MiB
from tests.copy.helpers import sha512, wait_for


def test_redirect_is_followed_with_range_kept(servers, options, image, tmp_path):
    server = servers(image)
    server.faults.redirects = {'/old': '/image'}
    server.faults.close_after = 1 * MiB
    source = HttpSource(server.url_for('/old'), headers={'X-Auth-Token': 'secret'})
    result = copy(source, str(tmp_path / 'disk'), checksum=sha512(image),
                  options=options).wait(60)
    assert result.retries == 1
    paths = [(r.path, r.headers.get('Range'), r.headers.get('X-Auth-Token'))
             for r in server.requests]
    assert paths == [('/old', None, 'secret'), ('/image', None, 'secret'),
                     ('/old', f'bytes={MiB}-', 'secret'),
                     ('/image', f'bytes={MiB}-', 'secret')]


def test_headers_stay_on_the_url_origin(servers, options, image, tmp_path):
    origin = servers(b'', path='/nothing')
    other = servers(image)
    origin.faults.redirects = {'/image': other.url.replace('127.0.0.1', 'localhost')}
    source = HttpSource('http://user:p%40ss@' + origin.url_for('/image').split('//', 1)[1],
                        headers={'X-Auth-Token': 'secret'})
    assert 'p%40ss' not in source.description and 'user' not in source.description
    assert 'p%40ss' not in str(source.identity())

    copy(source, str(tmp_path / 'disk'), checksum=sha512(image), options=options).wait(60)

    sent = origin.requests[0].headers
    assert sent['X-Auth-Token'] == 'secret'
    assert sent['Authorization'] == 'Basic ' + base64.b64encode(b'user:p@ss').decode()
    assert 'X-Auth-Token' not in other.requests[0].headers
    assert 'Authorization' not in other.requests[0].headers


def test_callable_headers_are_evaluated_per_request(servers, options, image, tmp_path):
    server = servers(image)
    server.faults.status_once = 503
    tokens = iter(['token-1', 'token-2', 'token-3'])
    source = HttpSource(server.url, headers=lambda: {'X-Auth-Token': next(tokens)})
    copy(source, str(tmp_path / 'disk'), options=options).wait(60)
    assert [r.headers['X-Auth-Token'] for r in server.requests] == ['token-1', 'token-2']


def test_too_many_redirects(servers, options, tmp_path):
    server = servers(b'x')
    server.faults.redirects = {'/image': '/image'}
    with pytest.raises(exceptions.SourceError, match='redirects'):
        copy(server.url, str(tmp_path / 'disk'), options=options).wait(60)
    assert len(server.requests) == 6


def test_identity_hides_credentials_and_query(servers):
    source = HttpSource('http://u:pw@Example.COM/v1/obj?temp_url_sig=abc')
    assert list(source.identity()) == ['url']       # validators come with a response
    url = source.identity()['url']
    assert url.startswith('http://example.com:80/v1/obj?sha256=')
    assert 'abc' not in url and 'pw' not in url
    assert 'abc' not in source.description and 'pw' not in source.description


@pytest.mark.parametrize('url', ['ftp://host/x', 'http:///x', 'http://host:99999/x'])
def test_bad_urls(url):
    with pytest.raises(exceptions.InvalidLocation):
        HttpSource(url)


def test_connection_refused_is_retried_then_exhausted(options, tmp_path):
    opts = CopyOptions(**{**options.__dict__, 'retries': 2})
    with pytest.raises(exceptions.RetriesExhausted) as err:
        copy('http://127.0.0.1:1/image', str(tmp_path / 'disk'), options=opts).wait(60)
    assert 'connecting to http://127.0.0.1:1/image failed' in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_stalled_server_times_out_and_resumes(servers, options, image, tmp_path):
    server = servers(image)
    server.faults.pause_after = 1 * MiB      # stalls until resume: a read timeout
    opts = CopyOptions(**{**options.__dict__, 'read_timeout': 1.0})
    task = copy(server.url, str(tmp_path / 'disk'), checksum=sha512(image), options=opts)
    wait_for(lambda: len(server.requests) == 2, 'a retry after the read timeout')
    server.faults.pause_after = None
    server.resume.set()
    result = task.wait(60)
    assert result.retries >= 1
    assert server.requests[1].headers['Range'] == f'bytes={MiB}-'


def _tls_server(servers, tls_cert, data):
    cert, key = tls_cert
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return servers(data, tls=ctx)


def test_https_with_a_trusted_certificate(servers, options, image, tmp_path, tls_cert):
    server = _tls_server(servers, tls_cert, image)
    server.faults.close_after = 2 * MiB + 1
    client = ssl.create_default_context(cafile=tls_cert[0])
    result = copy(HttpSource(server.url, ssl_context=client), str(tmp_path / 'disk'),
                  checksum=sha512(image), options=options).wait(60)
    assert result.retries == 1 and result.size == len(image)
    assert server.requests[1].headers['Range'] == f'bytes={2 * MiB + 1}-'


def test_https_untrusted_certificate_is_not_retried(servers, options, tmp_path,
                                                    tls_cert):
    server = _tls_server(servers, tls_cert, b'x')
    with pytest.raises(exceptions.SourceError, match='not trusted') as err:
        copy(server.url, str(tmp_path / 'disk'), options=options).wait(60)
    assert not isinstance(err.value, exceptions.RetriesExhausted)


def test_https_never_redirects_down_to_http(servers, options, tmp_path, tls_cert):
    plain = servers(b'x')
    server = _tls_server(servers, tls_cert, b'x')
    server.faults.redirects = {'/image': plain.url}
    client = ssl.create_default_context(cafile=tls_cert[0])
    with pytest.raises(exceptions.SourceError, match='never from https down to http'):
        copy(HttpSource(server.url, ssl_context=client), str(tmp_path / 'disk'),
             options=options).wait(60)
    assert plain.requests == []
