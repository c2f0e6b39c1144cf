"""fetch/explain/handlers through the real command against the lab's real Glance."""
from __future__ import annotations

import hashlib
import os
import sqlite3

from tests.functional.conftest import image_bytes


def _no_leftovers(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_fetch_from_glance_data_api(make_image, nova_conf, cli, tmp_path):
    data = image_bytes(24 << 20)
    image_id = make_image(data)
    target = tmp_path / 'disk.raw'
    res = cli('fetch', image_id, str(target), '--config-file', nova_conf(), '--json')
    assert res.rc == 0, res
    out = res.json
    assert target.read_bytes() == data
    assert out['image_id'] == image_id and out['target'] == str(target)
    assert out['handler'] == 'stream_copy' and out['zero_copy'] is False
    assert out['location'].startswith(f'glance:{image_id}')
    assert out['bytes_copied'] == len(data)
    assert out['seconds'] > 0
    used = [a for a in out['attempts'] if a['outcome'] == 'used']
    assert len(used) == 1 and 'verified against sha512' in used[0]['reason']
    # Glance's fs store gives a file:// location that no enabled handler reads:
    # explained, not silently dropped.
    assert any(a['location'].startswith('file://') and a['outcome'] == 'skipped'
               and 'no enabled handler reads file' in a['reason'] for a in out['attempts'])
    assert out['verified'] == 'sha512:' + hashlib.sha512(data).hexdigest()
    # sparse: the zero megabytes were not written
    assert os.stat(target).st_blocks * 512 < len(data)
    assert _no_leftovers(tmp_path) == sorted(['disk.raw', 'state'] + [
        p for p in os.listdir(tmp_path) if p.startswith('nova-')])


def test_explain_writes_nothing_and_gives_reasons(make_image, nova_conf, cli, tmp_path):
    image_id = make_image(image_bytes(2 << 20))
    target = tmp_path / 'disk.raw'
    res = cli('explain', image_id, str(target), '--config-file', nova_conf(), '--json')
    assert res.rc == 0, res
    out = res.json
    assert out['dry_run'] is True and out['handler'] == 'stream_copy'
    assert not target.exists()
    outcomes = {(a['handler'], a['outcome']) for a in out['attempts']}
    assert ('stream_copy', 'eligible') in outcomes
    text = cli('explain', image_id, str(target), '--config-file', nova_conf())
    assert text.rc == 0 and 'would use: stream_copy' in text.out
    assert 'locations: image record' in text.out


def test_unknown_image_id_is_bad_input(nova_conf, cli, tmp_path):
    res = cli('fetch', '4d1c9a3e-0000-4000-8000-000000000000', str(tmp_path / 'd'),
              '--config-file', nova_conf())
    assert res.rc == 2, res
    assert 'not found in Glance' in res.err and 'check the image id' in res.err
    assert not (tmp_path / 'd').exists()


def test_image_without_data_or_locations(make_image, nova_conf, cli, tmp_path):
    image_id = make_image(None)  # queued: no data, no locations
    res = cli('fetch', image_id, str(tmp_path / 'd'), '--config-file', nova_conf(), '--json')
    assert res.rc == 1, res
    reasons = [a['reason'] for a in res.json['attempts']]
    assert any("status is 'queued'" in r for r in reasons)
    assert not (tmp_path / 'd').exists()


def test_existing_target_untouched(make_image, nova_conf, cli, tmp_path):
    image_id = make_image(image_bytes(1 << 20))
    target = tmp_path / 'disk.raw'
    target.write_bytes(b'customer data')
    before = os.stat(target)
    res = cli('fetch', image_id, str(target), '--config-file', nova_conf())
    assert res.rc == 2 and 'already exists' in res.err, res
    assert target.read_bytes() == b'customer data'
    assert os.stat(target).st_mtime_ns == before.st_mtime_ns


def test_missing_target_directory(make_image, nova_conf, cli, tmp_path):
    image_id = make_image(image_bytes(1 << 20))
    res = cli('fetch', image_id, str(tmp_path / 'no' / 'disk'), '--config-file', nova_conf())
    assert res.rc == 2 and 'does not exist' in res.err, res


def test_store_returning_wrong_bytes(glance_lab, make_image, nova_conf, cli, tmp_path):
    """Bit rot in Glance's own store: the hash check catches it, nothing is published."""
    data = image_bytes(4 << 20)
    image_id = make_image(data)
    stored = glance_lab.images_dir / image_id
    with open(stored, 'r+b') as f:
        f.seek(3 << 20)
        f.write(b'\xff' * 16)
    res = cli('fetch', image_id, str(tmp_path / 'disk'), '--config-file', nova_conf(),
              '--json')
    assert res.rc == 1, res
    failed = [a for a in res.json['attempts'] if a['outcome'] == 'failed']
    assert failed and 'ChecksumMismatch' in failed[0]['reason']
    assert image_id in failed[0]['reason']
    assert [p for p in os.listdir(tmp_path) if 'disk' in p] == []


def test_malformed_and_unknown_locations_in_glance_records(glance_lab, make_image,
                                                            nova_conf, cli, tmp_path):
    """Glance refuses such URLs through its API, but old rows and other stores' rows
    exist in real databases: edit the lab's real Glance DB and read them back."""
    image_id = make_image(image_bytes(1 << 20))
    db = sqlite3.connect(glance_lab.workdir / 'glance.sqlite')
    with db:
        row = db.execute('select id, value, meta_data, status, created_at, deleted '
                         'from image_locations where image_id = ?', (image_id,)).fetchone()
        for url in ('rbd://only/three/parts', 'gopher://old.store/img'):
            db.execute('insert into image_locations (image_id, value, meta_data, status,'
                       ' created_at, deleted) values (?, ?, ?, ?, ?, ?)',
                       (image_id, url, row[2], row[3], row[4], row[5]))
    db.close()
    res = cli('explain', image_id, str(tmp_path / 'd'), '--config-file', nova_conf(), '--json')
    assert res.rc == 0, res
    by_loc = {a['location']: a for a in res.json['attempts'] if a['handler'] == '*'}
    assert '4 parts' in by_loc['rbd://only/three/parts']['reason']
    assert "unknown location scheme 'gopher'" in by_loc['gopher://old.store/img']['reason']
    assert res.json['handler'] == 'stream_copy'  # still served, through Glance


def test_handlers_command(nova_conf, cli):
    conf = nova_conf('virt_driver_handlers = vmwareapi:stream_copy,ironic:nope+stream_copy')
    res = cli('handlers', '--config-file', conf, '--json')
    assert res.rc == 0, res
    assert 'stream_copy' in res.json['installed']
    assert res.json['enabled']['ironic'] == ['nope', 'stream_copy']
    text = cli('handlers', '--config-file', conf)
    assert 'nope (NOT INSTALLED)' in text.out


def test_unknown_handler_in_config(make_image, nova_conf, cli, tmp_path):
    image_id = make_image(image_bytes(1 << 20))
    res = cli('fetch', image_id, str(tmp_path / 'd'), '--config-file',
              nova_conf('handlers = rbd_klone,stream_copy'))
    assert res.rc == 2 and 'rbd_klone' in res.err and 'not installed' in res.err, res


def test_bad_usage_exit_2(cli):
    assert cli('fetch').rc == 2
    assert cli('frobnicate').rc == 2
