"""Hostile and malformed input (issue 11): property-based tests with hypothesis.

What is checked, for inputs built to hurt (control characters, NUL, RTL marks,
combining characters, lone surrogates, percent-encoding, ``..``, IPv6 brackets,
out-of-range ports, userinfo, very long components, wrong JSON types):

* ``parse_location`` never raises; every result has a ``scheme`` and a ``usable``
  flag, an unusable one a non-empty ``problem``; neither ``display`` nor ``problem``
  shows the URL's password.
* each registered location class (the ``image_handlers.locations`` entry points)
  either refuses its own scheme with a reason or yields the attributes its handler
  relies on (rbd: four non-empty parts without "/" or NUL; file: an absolute path
  without NUL or ".."; iscsi: host, port 1-65535, a whole iqn./eui. name, LUN
  0-16383, no credentials; http(s): host, port, path).
* ``image_info`` (the image-record reader) never raises for a dict record with
  JSON-like values (a record is always a mapping: glanceclient's and Nova's are);
  its locations are all Location objects, its ``location_sources`` non-empty.
* ``recorded_checksum``, ``SignatureClaim.from_properties``, ``Checksum.parse`` and
  ``parse_target`` give a value or their documented exception (Untrusted, BadInput,
  InvalidTarget) with a message naming what is wrong; nothing else escapes.

Runs are seeded (``derandomize=True``): the same examples every time. A long run
explores more: ``IH_HYPOTHESIS_EXAMPLES=20000 .venv/bin/python -m pytest -p
no:cacheprovider -q tests/unit/test_properties.py``. Needs no lab.
"""
from __future__ import annotations

import os
import re
import urllib.parse

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from image_handlers import exceptions
from image_handlers.copy.checksum import Checksum
from image_handlers.glance import image_info
from image_handlers.image import ImageInfo
from image_handlers.locations import (CinderLocation, FileLocation, HttpLocation,
                                      IscsiLocation, Location, RbdLocation,
                                      parse_location, schemes)
from image_handlers.targets import FileTarget, RbdTarget, parse_target
from image_handlers.trust.hashes import recorded_checksum
from image_handlers.trust.signature import PROPERTIES, SignatureClaim

EXAMPLES = int(os.environ.get('IH_HYPOTHESIS_EXAMPLES', '0') or 0)


def examples(n: int) -> settings:
    return settings(max_examples=max(n, EXAMPLES), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# -- hostile text ------------------------------------------------------------------

SPECIAL = ['\x00', '\n', '\r', '\t', '\x7f', '\x1b', ' ', '\u200f', '\u202e', '\u200b',
           '\u0301', '\ufeff', '\ud800', '\udfff', '\U0001f4a9', 'İ', '\u0661', '²',
           '%', '%00', '%2F', '%2f', '%0A', '%ZZ', '%C3%A9', '%ED%A0%80', '..', '.',
           '@', ':', '::', '[', ']', '/', '//', '?', '#', '\\', '=', '&', ';']

any_char = st.characters(codec=None, categories=None, exclude_categories=())
hostile_text = st.one_of(
    st.text(any_char, max_size=20),
    st.lists(st.one_of(st.sampled_from(SPECIAL), st.text(any_char, max_size=3),
                       st.text('abcXYZ019-._~', min_size=1, max_size=8)),
             max_size=8).map(''.join),
    st.sampled_from(SPECIAL),
    st.integers(200, 5000).map(lambda n: 'a' * n),          # very long
)

SCHEMES = ['rbd', 'file', 'http', 'https', 'iscsi', 'cinder', 'RBD', 'FiLe', 'HTTP',
           'hTTps', 'ISCSI', 'Cinder', 'unknown', 'glance', 'swift+https', 'x-y', '']

word = st.text('abcdefghijklmnopqrstuvwxyz0123456789-', min_size=1, max_size=12)
component = st.one_of(word, hostile_text,
                      word.map(lambda w: urllib.parse.quote(w + '/')),
                      st.text(any_char, max_size=6).map(
                          lambda t: urllib.parse.quote(t, safe='', errors='surrogatepass')))
port = st.one_of(st.integers(-5, 70000).map(str), st.just(''), hostile_text,
                 st.just('3260'), st.just('0'), st.just('65536'), st.just('٣٢٦٠'))
host = st.one_of(word, st.just('localhost'), st.just('127.0.0.1'),
                 st.just('[::1]'), st.just('[fe80::1%25eth0]'), st.just('[::1'),
                 st.just('::1]'), st.just('[v1.x]'), st.just('[]'), st.just(''),
                 hostile_text)
# A password that is easy to look for in what is printed.
SECRET = 'S3cretPw'
userinfo = st.one_of(
    st.just(''),
    st.builds(lambda u: u + '@', word),
    st.builds(lambda u, p: f'{u}:{SECRET}{p}@', word, word),
    st.builds(lambda u, p: f'{u}:{p}@', hostile_text, hostile_text),
)


@st.composite
def netlocs(draw):
    netloc = draw(userinfo) + draw(host)
    if draw(st.booleans()):
        netloc += ':' + draw(port)
    return netloc


@st.composite
def urls(draw):
    """URL-shaped strings of every scheme, well formed or not."""
    scheme = draw(st.sampled_from(SCHEMES))
    sep = draw(st.sampled_from(['://', '://', '://', ':', ':/', ':///', '//', '']))
    path = '/'.join(draw(st.lists(component, max_size=6)))
    url = scheme + sep + draw(netlocs()) + draw(st.sampled_from(['/', '', '//'])) + path
    if draw(st.booleans()):
        url += draw(st.sampled_from(['?', '#', '?a=b&token=', '#frag'])) + draw(
            hostile_text)
    return url


uuid_like = st.uuids().map(str)
iqn = st.one_of(
    st.builds(lambda y, m, d, s: f'iqn.{y:04d}-{m:02d}.{d}' + (f':{s}' if s else ''),
              st.integers(0, 9999), st.integers(0, 99),
              st.text('abcz09.-', min_size=1, max_size=12),
              st.one_of(st.just(''), st.text('aZ09.:_-', max_size=12))),
    st.text('0123456789abcdefABCDEF', min_size=16, max_size=16).map(lambda h: 'eui.' + h),
    hostile_text)


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe='', errors='surrogatepass')


@st.composite
def scheme_urls(draw, kind=None):
    """Nearly-valid URLs of the registered schemes: usable ones and near misses."""
    kind = kind or draw(st.sampled_from(['rbd', 'file', 'http', 'https', 'iscsi',
                                         'cinder']))
    if kind == 'rbd':
        n = draw(st.sampled_from([4, 4, 4, 3, 5]))
        parts = draw(st.lists(st.one_of(word, word, word, component, component.map(_q)),
                              min_size=n, max_size=n))
        return 'rbd://' + '/'.join(parts)
    if kind == 'file':
        where = draw(st.sampled_from(['', 'localhost', 'otherhost', 'u:p@localhost']))
        segs = draw(st.lists(st.one_of(word, component, component.map(_q)),
                             min_size=1, max_size=5))
        return f'file://{where}/' + '/'.join(segs)
    if kind in ('http', 'https'):
        path = '/'.join(draw(st.lists(st.one_of(word, component), min_size=1,
                                      max_size=4)))
        return f'{kind}://{draw(netlocs())}/{path}'
    if kind == 'iscsi':
        netloc = draw(st.one_of(word, word, host))
        if draw(st.booleans()):
            netloc += ':' + draw(st.one_of(st.integers(0, 65535).map(str), port))
        if draw(st.integers(0, 4)) == 0:
            netloc = draw(userinfo) + netloc
        target = draw(st.one_of(iqn, iqn.map(_q), iqn.map(lambda i: _q(i + '\n'))))
        lun = draw(st.one_of(st.integers(0, 16383).map(str),
                             st.integers(-1, 17000).map(str), hostile_text))
        return f'iscsi://{netloc}/{target}/{lun}'
    volume = draw(st.one_of(uuid_like, hostile_text))
    store = draw(st.one_of(st.just(''), word.map(lambda w: w + '/')))
    return f'cinder://{store}{volume}'


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                        hostile_text)
json_values = st.recursive(
    json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(hostile_text, inner, max_size=4)),
    max_leaves=8)
chap_metadata = st.fixed_dictionaries({}, optional={
    'chap_user': st.one_of(word, json_values, st.just('alice\n')),
    'chap_secret': st.one_of(word, json_values, st.just('ref\n')),
    'weight': json_values, 'host_weights': json_values})
metadata = st.one_of(st.dictionaries(hostile_text, json_values, max_size=4),
                     chap_metadata, json_values)
any_url = st.one_of(urls(), scheme_urls(), scheme_urls(), hostile_text, json_values)


# -- locations ---------------------------------------------------------------------

_IQN_WHOLE = re.compile(
    r'(iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:[A-Za-z0-9.:_-]+)?|eui\.[0-9A-Fa-f]{16})')


def _check_location(loc: Location, url) -> None:
    assert isinstance(loc, Location)
    assert isinstance(loc.scheme, str)
    assert isinstance(loc.usable, bool)
    assert isinstance(loc.display, str)
    if not loc.usable:
        assert isinstance(loc.problem, str) and loc.problem.strip()
    if isinstance(url, str):
        # The password, as urlsplit reads it, is never printed (SECRET marks the
        # generated ones, so that a password can be told from the rest).
        try:
            had_netloc = bool(urllib.parse.urlsplit(url).netloc)
            password = urllib.parse.urlsplit(url).password or ''
        except ValueError:
            had_netloc, password = False, ''
        if SECRET in password:
            rest = url.replace(password, '', 1)
            assert loc.display.count(SECRET) <= rest.count(SECRET), loc.display
            if not loc.usable:
                assert loc.problem.count(SECRET) <= rest.count(SECRET), loc.problem
        try:
            netloc = urllib.parse.urlsplit(loc.display).netloc
        except ValueError:
            assert not loc.usable, loc.display     # a usable one prints a URL
            netloc = ''
        # (Only when the URL had a host part: urlunsplit prints a path starting
        # with "//" as if it were one, e.g. file:////:@0/ as file://:@0/.)
        if had_netloc and '@' in netloc:
            assert netloc.startswith('***@') and netloc.count('@') == 1, loc.display
    if not loc.usable:
        return
    if isinstance(loc, RbdLocation):
        for part in (loc.fsid, loc.pool, loc.image, loc.snapshot):
            assert part and '/' not in part and '\x00' not in part
    elif isinstance(loc, FileLocation):
        assert loc.path.startswith('/') and '\x00' not in loc.path
        assert '..' not in loc.path.split('/')
    elif isinstance(loc, IscsiLocation):
        assert loc.host and 0 < loc.port <= 65535
        assert loc.portal == f'{loc.host}:{loc.port}'
        assert _IQN_WHOLE.fullmatch(loc.iqn), repr(loc.iqn)
        assert isinstance(loc.lun, int) and 0 <= loc.lun <= 16383
        assert '@' not in urllib.parse.urlsplit(loc.url).netloc
        for value in (loc.chap_user, loc.chap_secret_ref):
            assert value is None or (isinstance(value, str) and value.isprintable()
                                     and value.strip() == value and value)
    elif isinstance(loc, HttpLocation):
        assert loc.host and 0 < loc.port <= 65535
    else:
        raise AssertionError(f'usable location of unexpected type {type(loc)}')


@examples(400)
@given(any_url, metadata, st.integers(-3, 10**6))
@example('http://[::1/x', {}, 0)                 # ValueError from urlsplit
@example('zz://[', {}, 0)
@example('file://[x/p', {}, 0)
@example('cinder://[x', {}, 0)
@example('file://u:S3cretPw@host/p', {}, 0)      # refusal printed the userinfo
@example('http://:]@[::1/0', {}, 0)     # "]" in userinfo: host "::1" from "[::1"
@example('iscsi://h/iqn.2000-01.com.x%0A/0', {}, 0)     # "$" let a newline in
@example('iscsi://h/iqn.2000-01.com.x/0',
         {'chap_user': 'alice\n', 'chap_secret': 'ref\n'}, 0)
def test_parse_location_never_raises(url, meta, index):
    loc = parse_location(url, meta, index)
    _check_location(loc, url)
    assert loc.index == index


REGISTERED = sorted(schemes().items())


def test_entry_points_cover_the_location_classes():
    assert dict(REGISTERED) == {'rbd': RbdLocation, 'file': FileLocation,
                                'http': HttpLocation, 'https': HttpLocation,
                                'iscsi': IscsiLocation, 'cinder': CinderLocation}


@pytest.mark.parametrize('name,cls', REGISTERED, ids=[n for n, _ in REGISTERED])
@examples(200)
@given(data=st.data(), meta=st.one_of(st.just({}), chap_metadata))
def test_each_class_parses_its_scheme_or_says_why(name, cls, data, meta):
    """The class itself (not the factory): InvalidLocation with a reason, or a
    location with what its handler needs."""
    url = data.draw(st.one_of(scheme_urls(name), scheme_urls(name),
                              urls().map(lambda u: name + ':' + u.partition(':')[2])),
                    label='url')
    try:
        loc = cls.from_url(url, meta, 0)
    except exceptions.InvalidLocation as exc:
        assert str(exc).strip()
        return
    assert isinstance(loc, cls)
    _check_location(loc, url)


# -- image records -----------------------------------------------------------------

location_entry = st.one_of(
    st.fixed_dictionaries({'url': any_url}, optional={'metadata': metadata}),
    st.fixed_dictionaries({}, optional={'metadata': metadata}),
    json_values)
record_fields = st.fixed_dictionaries({}, optional={
    'id': json_values,
    'status': st.one_of(st.sampled_from(['active', 'queued', 'killed']), json_values),
    'disk_format': json_values, 'container_format': json_values,
    'size': st.one_of(st.integers(), json_values), 'virtual_size': json_values,
    'checksum': st.one_of(st.text('0123456789abcdef', max_size=34), json_values),
    'os_hash_algo': st.one_of(st.sampled_from(['sha512', 'SHA256', 'md5', 'shake_128',
                                               'sha3_512', 'blake2b', 'nope', '']),
                              json_values),
    'os_hash_value': st.one_of(st.text('0123456789abcdefABCDEF', max_size=130),
                               json_values),
    'owner': json_values, 'name': json_values,
    'locations': st.one_of(st.lists(location_entry, max_size=4), json_values),
    'direct_url': st.one_of(any_url, json_values),
    'properties': st.one_of(st.dictionaries(hostile_text, json_values, max_size=4),
                            json_values),
    'img_signature': st.one_of(st.just('c2lnbmF0dXJl'), json_values),
    'img_signature_hash_method': st.one_of(st.just('SHA-256'), json_values),
    'img_signature_key_type': st.one_of(st.just('RSA-PSS'), json_values),
    'img_signature_certificate_uuid': st.one_of(uuid_like, json_values),
})
records = st.builds(lambda extra, fields: {**extra, **fields},
                    st.dictionaries(hostile_text, json_values, max_size=3),
                    record_fields)
api_entries = st.lists(st.tuples(any_url, metadata), max_size=3)


@examples(200)
@given(records, api_entries, st.one_of(st.none(), hostile_text))
@example({'properties': 'ab'}, [], None)            # ValueError from dict.update
@example({'properties': [1]}, [], None)             # TypeError from dict.update
@example({'locations': 5}, [], None)                # TypeError: not iterable
@example({'locations': ['x']}, [], None)            # AttributeError: str.get
@example({'locations': [{'url': 'rbd://a/b/c/d', 'metadata': 1}]}, [], None)
@example({'direct_url': ['x']}, [], None)           # TypeError: unhashable
@example({}, [(['x'], {})], None)                   # unhashable API entry
@example({'os_hash_algo': 5, 'os_hash_value': 'ab'}, [], None)   # AttributeError
@example({'checksum': 5}, [], None)
@example({'img_signature': 'é', 'img_signature_hash_method': 'SHA-256',
          'img_signature_key_type': 'RSA-PSS',
          'img_signature_certificate_uuid': 'u'}, [], None)    # ValueError: non-ASCII
def test_image_info_never_raises(record, entries, note):
    info = image_info('image-1', record, entries, note)
    assert isinstance(info, ImageInfo)
    assert isinstance(info.properties, dict)
    assert info.location_sources and all(
        isinstance(s, str) and s for s in info.location_sources)
    for i, loc in enumerate(info.locations):
        assert isinstance(loc, Location) and loc.index == i
        _check_location(loc, loc.url)
    # What the trust checks then read from it: a value or Untrusted with a reason.
    try:
        recorded_checksum(info)
    except exceptions.Untrusted as exc:
        assert re.search('os_hash_algo|os_hash_value|checksum', str(exc)), str(exc)
    try:
        SignatureClaim.from_properties(info.id, info.properties)
    except exceptions.Untrusted as exc:
        assert 'img_signature' in str(exc), str(exc)


# -- hashes, signatures, checksums, targets ----------------------------------------

hash_field = st.one_of(st.none(), json_values,
                       st.sampled_from(['sha512', ' SHA512 ', 'md5', 'shake_256',
                                        'sha3_256', 'blake2s', 'md5-sha1', 'sha512\x00',
                                        '\ud800', 'İ']),
                       st.text('0123456789abcdefABCDEF \n', max_size=130))


@examples(400)
@given(hash_field, hash_field, hash_field)
@example('sha512', 'ab' * 64, None)
@example(7, 'ab', None)
@example(None, None, ['x'])
def test_recorded_checksum_value_or_untrusted(algo, value, md5):
    image = ImageInfo(id='image-1', status='active', os_hash_algo=algo,
                      os_hash_value=value, checksum=md5)
    try:
        result = recorded_checksum(image)
    except exceptions.Untrusted as exc:
        assert re.search('os_hash_algo|os_hash_value|checksum', str(exc)), str(exc)
        return
    assert result is None or isinstance(result, Checksum)


signature_value = st.one_of(st.none(), st.just(''), json_values,
                            st.just('c2lnbmF0dXJl'), st.just('c2ln bmF0dXJl\n'),
                            st.just('é'), st.just('\ud800'))


@examples(300)
@given(st.fixed_dictionaries({}, optional={
    'img_signature': signature_value,
    'img_signature_hash_method': st.one_of(
        st.sampled_from(['SHA-256', 'SHA-512', 'sha-256', 'MD5']), json_values),
    'img_signature_key_type': st.one_of(
        st.sampled_from(['RSA-PSS', 'DSA', 'ECC_SECP384R1', 'rsa']), json_values),
    'img_signature_certificate_uuid': st.one_of(uuid_like, json_values)}),
    st.dictionaries(hostile_text, json_values, max_size=3))
@example({'img_signature': 'é', 'img_signature_hash_method': 'SHA-256',
          'img_signature_key_type': 'RSA-PSS', 'img_signature_certificate_uuid': 'u'},
         {})
def test_signature_claim_value_or_untrusted(props, extra):
    try:
        claim = SignatureClaim.from_properties('image-1', {**extra, **props})
    except exceptions.Untrusted as exc:
        assert 'img_signature' in str(exc), str(exc)
        return
    if claim is not None:
        assert all(isinstance(getattr(claim, f), str) for f in
                   ('signature', 'hash_method', 'key_type', 'certificate_uuid'))
    else:
        assert all(props.get(n) in (None, '') for n in PROPERTIES)


@examples(500)
@given(st.one_of(
    hostile_text,
    st.builds(lambda a, s, h: a + s + h,
              st.one_of(st.sampled_from(['sha512', 'MD5', ' sha256', 'shake_128',
                                         'sha3_512', 'nope', '', '\ud800', 'sha\x00']),
                        hostile_text),
              st.sampled_from([':', '::', '']),
              st.one_of(st.text('0123456789abcdefABCDEF: \nİ', max_size=130),
                        hostile_text))))
@example('md5:' + 'a' * 32)
@example('sha512:' + 'İ' * 64)
def test_checksum_parse_value_or_bad_input(text):
    try:
        checksum = Checksum.parse(text)
    except exceptions.BadInput as exc:
        assert 'checksum' in str(exc), str(exc)
        return
    assert Checksum.parse(str(checksum)) == checksum
    assert checksum.hexdigest and set(checksum.hexdigest) <= set('0123456789abcdef')


@examples(400)
@given(st.one_of(hostile_text,
                 st.builds(lambda p, s, n: 'rbd:' + p + s + n, hostile_text,
                           st.sampled_from(['/', '', '//', '@']), hostile_text),
                 st.lists(component, max_size=5).map('/'.join)),
       st.one_of(st.sampled_from(['raw', 'qcow2', 'RAW', 'vmdk', '']), hostile_text))
@example('a\x00b', 'raw')
@example('rbd:pool/na\x00me', 'raw')
def test_parse_target_value_or_invalid_target(spec, disk_format):
    try:
        target = parse_target(spec, disk_format)
    except exceptions.InvalidTarget as exc:
        assert str(exc).strip()
        return
    if isinstance(target, RbdTarget):
        assert target.pool and target.name
        assert '/' not in target.name and '@' not in target.name
        assert '\x00' not in target.pool + target.name
    else:
        assert isinstance(target, FileTarget)
        assert os.path.isabs(target.path) and '\x00' not in target.path
        assert target.disk_format in ('raw', 'qcow2')
