"""Each scheme class validates its own URL; nothing is guessed or dropped."""
import pytest

from image_handlers.locations import (FileLocation, HttpLocation, IscsiLocation,
                                      MalformedLocation, RbdLocation, UnknownLocation,
                                      parse_location, redact_url)


def test_rbd_four_quoted_parts():
    loc = parse_location('rbd://1b2c-ff/images/9a%20b/snap', {'store': 'ceph'}, 2)
    assert isinstance(loc, RbdLocation)
    assert (loc.fsid, loc.pool, loc.image, loc.snapshot) == ('1b2c-ff', 'images', '9a b', 'snap')
    assert loc.index == 2 and loc.metadata == {'store': 'ceph'}
    assert loc.endpoint_key == 'rbd://1b2c-ff/images'


@pytest.mark.parametrize('url,why', [
    ('rbd://fsid/images/img', '4 parts'),
    ('rbd://fsid/images/img/snap/extra', '4 parts'),
    ('rbd://fsid//img/snap', 'pool is empty'),
    ('rbd:///images/img/snap', 'fsid is empty'),
    ('rbd://fsid/images/img/', 'snapshot is empty'),
    ('rbd://fsid/images/a%2Fb/snap', 'contains "/"'),
    ('rbd://fsid/images/img/snap?x=1', 'query'),
])
def test_rbd_malformed(url, why):
    loc = parse_location(url)
    assert isinstance(loc, MalformedLocation)
    assert not loc.usable
    assert why in loc.problem and 'rbd' in loc.problem


def test_file_location_normalised_and_strict():
    loc = parse_location('file:///var/lib/glance/images//abc', {'mountpoint': '/var/lib/glance'})
    assert isinstance(loc, FileLocation)
    assert loc.path == '/var/lib/glance/images/abc'
    assert loc.endpoint_key == 'file:///var/lib/glance'
    for bad, why in [('file://otherhost/x', 'only file:///path'),
                     ('file:///a/../etc/shadow', '".."'),
                     ('file:///x?y', 'query')]:
        got = parse_location(bad)
        assert isinstance(got, MalformedLocation) and why in got.problem


def test_http_location():
    loc = parse_location('https://user:pw@Img.Example:8443/v1/x.raw?token=s3cret')
    assert isinstance(loc, HttpLocation)
    assert (loc.host, loc.port, loc.tls) == ('img.example', 8443, True)
    # credentials and tokens never reach a report
    assert 'pw' not in loc.display and 's3cret' not in loc.display
    assert parse_location('http://h/x').port == 80
    assert isinstance(parse_location('http:///x'), MalformedLocation)
    assert isinstance(parse_location('http://h/'), MalformedLocation)
    assert isinstance(parse_location('http://h:99999/x'), MalformedLocation)


def test_iscsi_location():
    loc = parse_location('iscsi://127.0.0.1:3261/iqn.2010-10.org.openstack:img1/1')
    assert isinstance(loc, IscsiLocation)
    assert (loc.host, loc.port, loc.iqn, loc.lun) == (
        '127.0.0.1', 3261, 'iqn.2010-10.org.openstack:img1', 1)
    assert 'not an iqn' in parse_location('iscsi://h/notaniqn/1').problem
    assert 'LUN' in parse_location('iscsi://h/iqn.2010-10.org.x:y/abc').problem


@pytest.mark.parametrize('url,scheme', [('ftp://h/x', 'ftp'), ('swift+https://a/b', 'swift+https'),
                                        ('gopher://vol', 'gopher'), ('noscheme', '<none>')])
def test_unknown_schemes_are_kept_and_reported(url, scheme):
    loc = parse_location(url)
    assert isinstance(loc, UnknownLocation)
    assert not loc.usable
    assert repr(scheme) in loc.problem


@pytest.mark.parametrize('url', ['', None, 42])
def test_empty_or_non_string_url(url):
    loc = parse_location(url)
    assert isinstance(loc, MalformedLocation) and 'empty or not a string' in loc.problem


def test_weights_from_metadata():
    loc = parse_location('http://h/x', {'weight': '5', 'host_weights': {'cn1': 9}})
    assert loc.weight_for('cn1') == 9
    assert loc.weight_for('cn2') == 5
    assert parse_location('http://h/x', {'weight': 'junk'}).weight_for('x') == 0


def test_redact_url():
    assert redact_url('http://a:b@h/p?q=1') == 'http://***@h/p?***'


def test_iscsi_location_never_carries_a_secret():
    bad = parse_location('iscsi://user:secret@10.0.0.1/iqn.2010-10.org.x:y/1')
    assert not bad.usable and 'credentials in a location URL are refused' in bad.problem
    assert 'secret' not in bad.display
    ok = parse_location('iscsi://10.0.0.1:3261/iqn.2010-10.org.x:y/1',
                        {'chap_user': 'img', 'chap_secret': 'images-lun'})
    assert (ok.portal, ok.chap_user, ok.chap_secret_ref) == (
        '10.0.0.1:3261', 'img', 'images-lun')
    half = parse_location('iscsi://h/iqn.2010-10.org.x:y/1', {'chap_user': 'img'})
    assert 'both chap_user and chap_secret' in half.problem
    ref = parse_location('iscsi://h/iqn.2010-10.org.x:y/1',
                         {'chap_user': 'img', 'chap_secret': '../../etc/shadow'})
    assert 'is not a secret reference' in ref.problem
    assert 'from 0 to 16383' in parse_location('iscsi://h/iqn.2010-10.org.x:y/99999').problem


def test_cinder_locations_are_recognised_and_explained_not_served():
    loc = parse_location('cinder://0b7c7a7e-3e6f-4b2e-9d9e-4a5b6c7d8e9f')
    assert not loc.usable and 'not served' in loc.problem and 'os-brick' in loc.problem
    multi = parse_location('cinder://fast/0b7c7a7e-3e6f-4b2e-9d9e-4a5b6c7d8e9f')
    assert multi.volume_id == '0b7c7a7e-3e6f-4b2e-9d9e-4a5b6c7d8e9f'
    assert 'expected cinder://' in parse_location('cinder://nope').problem
