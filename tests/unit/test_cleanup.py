"""cleanup.sweep on real files: what is removed (image gone, too old), what is
kept (young, held by a running copy's locks), dry runs, orphan checkpoints."""
from __future__ import annotations

import fcntl
import os

import pytest

from image_handlers import cleanup
from image_handlers.copy import checkpoint, locking
from image_handlers.copy.checkpoint import Checkpoint, CopyPaths


def _leftover(directory, name: str, image_id: str | None, age: float, now: float,
              data: bytes = b'x' * 8192) -> CopyPaths:
    paths = CopyPaths.for_target(str(directory / name))
    with open(paths.partial, 'wb') as f:
        f.write(data)
    checkpoint.save(paths, Checkpoint(len(data), 1 << 20, 'sha256:' + 'a' * 64,
                                      {'url': 'http://x/'}, image_id))
    for p in (paths.partial, paths.checkpoint):
        os.utime(p, (now - age, now - age))
    return paths


NOW = 1_000_000.0


def _clock():
    return NOW


def test_gone_old_and_young(tmp_path):
    gone = _leftover(tmp_path, 'a', 'img-gone', 10, NOW)
    old = _leftover(tmp_path, 'b', 'img-there', 5000, NOW)
    young = _leftover(tmp_path, 'c', 'img-there', 10, NOW)
    asked = []

    def image_gone(image_id):
        asked.append(image_id)
        return image_id == 'img-gone'
    done = cleanup.sweep([str(tmp_path)], image_gone, 3600, now=_clock)
    by = {os.path.basename(l.partial): l for l in done.leftovers}
    assert by['.a.part'].outcome == cleanup.GONE and 'img-gone' in by['.a.part'].reason
    assert by['.b.part'].outcome == cleanup.OLD
    assert by['.c.part'].outcome == cleanup.KEPT
    assert not os.path.exists(gone.partial) and not os.path.exists(gone.checkpoint)
    assert not os.path.exists(old.partial)
    assert os.path.exists(young.partial) and os.path.exists(young.checkpoint)
    assert done.freed >= 2 * 8192 and len(done.removed) == 2


def test_a_partial_a_running_copy_holds_is_never_touched(tmp_path):
    held = _leftover(tmp_path, 'a', 'img-gone', 99999, NOW)
    fd = os.open(held.partial, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)              # as locking.open_partial holds it
    try:
        done = cleanup.sweep([str(tmp_path)], lambda i: True, 0, now=_clock)
    finally:
        os.close(fd)
    (leftover,) = done.leftovers
    assert leftover.outcome == cleanup.HELD and os.path.exists(held.partial)


def test_the_images_lock_held_means_a_copy_is_starting(tmp_path):
    paths = _leftover(tmp_path, 'a', 'img-1', 99999, NOW)
    lock_dir = tmp_path / 'locks'
    lock_dir.mkdir()
    fd = os.open(locking.lock_path(str(lock_dir), 'image-img-1'),
                 os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        done = cleanup.sweep([str(tmp_path)], lambda i: True, 0,
                             lock_dir=str(lock_dir), now=_clock)
    finally:
        os.close(fd)
    assert done.leftovers[0].outcome == cleanup.HELD and os.path.exists(paths.partial)
    again = cleanup.sweep([str(tmp_path)], lambda i: True, 0, lock_dir=str(lock_dir),
                          now=_clock)
    assert again.leftovers[0].outcome == cleanup.GONE
    assert not os.path.exists(paths.partial)


def test_dry_run_and_unknown_glance_remove_nothing(tmp_path):
    paths = _leftover(tmp_path, 'a', 'img-1', 10, NOW)
    dry = cleanup.sweep([str(tmp_path)], lambda i: True, None, dry_run=True, now=_clock)
    assert dry.leftovers[0].outcome == cleanup.GONE and os.path.exists(paths.partial)
    unknown = cleanup.sweep([str(tmp_path)], lambda i: None, None, now=_clock)
    assert unknown.leftovers[0].outcome == cleanup.KEPT and os.path.exists(paths.partial)


def test_an_orphan_checkpoint_goes_when_old_and_other_files_stay(tmp_path):
    paths = _leftover(tmp_path, 'a', None, 5000, NOW)
    os.unlink(paths.partial)
    (tmp_path / 'a').write_bytes(b'published disk')       # the target: not ours
    (tmp_path / '.hidden').write_bytes(b'someone else\'s')
    done = cleanup.sweep([str(tmp_path)], None, 3600, now=_clock)
    assert [l.outcome for l in done.leftovers] == [cleanup.OLD]
    assert sorted(os.listdir(tmp_path)) == ['.hidden', 'a']


def test_max_age_zero_in_the_option_turns_the_age_rule_off():
    assert cleanup.max_age_of(0) is None and cleanup.max_age_of(60) == 60.0


def test_a_directory_that_cannot_be_listed_is_bad_input(tmp_path):
    (tmp_path / 'f').write_text('')
    with pytest.raises(Exception) as err:
        cleanup.sweep([str(tmp_path / 'f')], None, None)
    assert 'cannot list' in str(err.value)
