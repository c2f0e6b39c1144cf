"""A compressed http location of a Glance image, end to end: the lab Glance lists
it with location metadata {"compression": "zstd"}, the lab nginx serves the .zst
file, and ``image-handlers fetch`` (stream_copy) decompresses it, verified
against the image's own hash (issue 13)."""
from __future__ import annotations

import hashlib
import os

from tests.functional.conftest import image_bytes
from tools import compress_image


def test_fetch_reads_a_zstd_location_and_verifies_the_decompressed_image(
        http_image, glance, nginx_lab, nova_conf, cli, tmp_path):
    data = image_bytes(12 << 20, seed=13)
    # The image's record (size, hash) is the raw image's; the compressed file is
    # a further location, added through Glance's API as a mirror would add it.
    image_id, _ = http_image(data)
    raw, packed = tmp_path / 'image.raw', tmp_path / f'{image_id}.raw.zst'
    raw.write_bytes(data)
    out = compress_image.compress(str(raw), str(packed), 'zstd', 1 << 20)
    assert out.sha512 == hashlib.sha512(data).hexdigest()
    url = nginx_lab.publish(packed)
    # Metadata values as strings: the lab's Glance 33 answered HTTP 500 to an
    # integer weight (50) in an added location's metadata, and took '50'.
    glance.images.add_location(image_id, url, {'compression': 'zstd', 'weight': '50'})

    conf = nova_conf('http_location_allowed_hosts = 127.0.0.1')
    explain = cli('explain', image_id, str(tmp_path / 'disk'), '--config-file', conf,
                  '--json')
    assert explain.rc == 0, explain
    chosen = [a for a in explain.json['attempts'] if a['outcome'] == 'eligible'][0]
    assert chosen['location'] == url
    assert 'decompressing its zstd data' in chosen['reason']

    res = cli('fetch', image_id, str(tmp_path / 'disk'), '--config-file', conf,
              '--json')
    assert res.rc == 0, res
    assert res.json['location'] == url
    details = res.json['details']
    assert details['compression'] == 'zstd'
    assert details['compressed_bytes_read'] == out.compressed_size < len(data)
    with open(tmp_path / 'disk', 'rb') as f:
        assert f.read() == data
    assert os.stat(tmp_path / 'disk').st_blocks * 512 < len(data)     # holes kept


def test_an_unknown_compression_in_location_metadata_is_refused_with_the_choices(
        http_image, glance, nginx_lab, nova_conf, cli, tmp_path):
    data = image_bytes(2 << 20, seed=14)
    image_id, raw_url = http_image(data)
    src = tmp_path / f'{image_id}.raw.lz4'
    src.write_bytes(data)
    url = nginx_lab.publish(src)
    glance.images.add_location(image_id, url, {'compression': 'lz4', 'weight': '50'})
    conf = nova_conf('http_location_allowed_hosts = 127.0.0.1')
    res = cli('fetch', image_id, str(tmp_path / 'disk'), '--config-file', conf,
              '--json')
    assert res.rc == 0, res            # the next location serves the image
    refused = [a for a in res.json['attempts'] if a['location'] == url][0]
    assert refused['outcome'] == 'skipped', refused
    assert "location metadata 'compression' 'lz4' is not supported" in refused['reason']
    assert 'use one of zstd, gzip' in refused['reason']
    assert res.json['location'] == raw_url
    with open(tmp_path / 'disk', 'rb') as f:
        assert f.read() == data
