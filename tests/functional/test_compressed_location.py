"""A compressed http location of a Glance image, end to end: the lab Glance lists
it with location metadata {"compression": "zstd"}, the lab nginx serves the .zst
file, and ``image-handlers fetch`` (stream_copy) decompresses it, verified
against the image's own hash (issue 13)."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3

from tests.functional.conftest import image_bytes
from tools import compress_image


def _add_location_row(glance_lab, image_id: str, url: str, metadata: dict) -> None:
    """Put ``url`` first among the image's locations, in Glance's own database.

    Glance 33 in the lab answered HTTP 500 to adding a location to an active
    image through the API, so the row is written as Glance itself writes them
    (what Glance then serves is exactly what the handlers see)."""
    db = sqlite3.connect(glance_lab.workdir / 'glance.sqlite')
    with db:
        rows = db.execute('select value, meta_data, status, created_at, deleted from '
                          'image_locations where image_id = ? and deleted = 0 '
                          'order by id', (image_id,)).fetchall()
        db.execute('delete from image_locations where image_id = ?', (image_id,))
        _, _, status, created, deleted = rows[0]
        for value, meta in [(url, json.dumps(metadata))] + [r[:2] for r in rows]:
            db.execute('insert into image_locations (image_id, value, meta_data, '
                       'status, created_at, deleted) values (?, ?, ?, ?, ?, ?)',
                       (image_id, value, meta, status, created, deleted))
    db.close()


def test_fetch_reads_a_zstd_location_and_verifies_the_decompressed_image(
        http_image, glance_lab, nginx_lab, nova_conf, cli, tmp_path):
    data = image_bytes(12 << 20, seed=13)
    # The image's record (size, hash) is the raw image's; the compressed file is
    # a further location, as a mirror would add it.
    image_id, _ = http_image(data)
    raw, packed = tmp_path / 'image.raw', tmp_path / f'{image_id}.raw.zst'
    raw.write_bytes(data)
    out = compress_image.compress(str(raw), str(packed), 'zstd', 1 << 20)
    assert out.sha512 == hashlib.sha512(data).hexdigest()
    url = nginx_lab.publish(packed)
    _add_location_row(glance_lab, image_id, url, {'compression': 'zstd'})

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
        http_image, glance_lab, nginx_lab, nova_conf, cli, tmp_path):
    data = image_bytes(2 << 20, seed=14)
    image_id, raw_url = http_image(data)
    src = tmp_path / f'{image_id}.raw.lz4'
    src.write_bytes(data)
    url = nginx_lab.publish(src)
    _add_location_row(glance_lab, image_id, url, {'compression': 'lz4'})
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
