"""image-handlers cleanup against the lab: partial copies left by killed copies
are removed when their image is gone from Glance or when they are old, kept while
they may be resumed, and never touched while a copy runs."""
from __future__ import annotations

import os
import subprocess

from tests.copy.helpers import checkpoint_offset, kill_9_at_checkpoint, partial_of, wait_for
from tests.functional.conftest import VENV_BIN, image_bytes

MiB = 1 << 20
SLOW = ('handlers = stream_copy\nbandwidth_limit = 2097152\n'
        'checkpoint_interval = 1048576\ncopy_buffer_size = 262144')


def _killed_copy(make_image, nova_conf, directory, seed: int) -> tuple[str, str]:
    image_id = make_image(image_bytes(16 * MiB, seed=seed))
    target = str(directory / f'disk-{seed}.raw')
    kill_9_at_checkpoint(
        [os.path.join(VENV_BIN, 'image-handlers'), 'fetch', image_id, target,
         '--config-file', nova_conf(SLOW)], target, 2 * MiB,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return image_id, target


def test_partials_of_deleted_images_go_and_the_others_stay_until_old(
        make_image, glance, nova_conf, cli, tmp_path):
    base = tmp_path / 'base'
    base.mkdir()
    deleted, gone_target = _killed_copy(make_image, nova_conf, base, 81)
    _kept, kept_target = _killed_copy(make_image, nova_conf, base, 82)
    glance.images.delete(deleted)
    conf = nova_conf('handlers = stream_copy')     # the directory alone (no RBD pool)
    dry = cli('cleanup', str(base), '--config-file', conf, '--dry-run', '--json')
    assert dry.rc == 0, dry
    assert dry.json['removed'] == 1 and os.path.exists(partial_of(gone_target))

    res = cli('cleanup', str(base), '--config-file', conf, '--json')
    assert res.rc == 0, res
    by = {l['partial']: l for l in res.json['leftovers']}
    assert by[partial_of(gone_target)]['outcome'] == 'image gone'
    assert by[partial_of(kept_target)]['outcome'] == 'kept'
    assert not os.path.exists(partial_of(gone_target))
    assert not os.path.exists(partial_of(gone_target) + '.json')
    assert os.path.exists(partial_of(kept_target))
    assert res.json['freed_bytes'] > 0      # allocated blocks (partials are sparse)

    old = cli('cleanup', str(base), '--config-file', conf, '--older-than', '0')
    assert old.rc == 0, old
    assert 'removed 1 partial copy' in old.out and 'not resumed for' in old.out
    assert os.listdir(base) == []


def test_cleanup_racing_a_running_copy_leaves_it_alone(make_image, nova_conf, cli,
                                                       tmp_path):
    data = image_bytes(16 * MiB, seed=83)
    image_id = make_image(data)
    target = str(tmp_path / 'disk.raw')
    copy = subprocess.Popen(
        [os.path.join(VENV_BIN, 'image-handlers'), 'fetch', image_id, target,
         '--config-file', nova_conf(SLOW)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (checkpoint_offset(target) or 0) >= 1 * MiB
                 or copy.poll() is not None, 'the copy to checkpoint 1 MiB', 60)
        res = cli('cleanup', str(tmp_path), '--config-file',
                  nova_conf('handlers = stream_copy'), '--older-than', '0', '--json')
        assert res.rc == 0, res
        (leftover,) = res.json['leftovers']
        assert leftover['outcome'] == 'held' and not leftover['removed']
        assert copy.wait(120) == 0
    finally:
        copy.kill()
        copy.wait()
    with open(target, 'rb') as f:
        assert f.read() == data
