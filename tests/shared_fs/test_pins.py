"""pins: one hard link per inode, recorded users, released only when unused."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from image_handlers.shared_fs import paths, pins
from image_handlers.shared_fs.errors import PinError

FS_ID = 'share'
DATA = b'image data ' * 3000


class Env:
    def __init__(self, root: Path, state: Path) -> None:
        self.root = root
        self.state = state
        self.image_id = str(uuid.uuid4())
        self.pin_dir = root / '.image_handlers' / 'pins' / 'host-a'
        (root / 'images').mkdir()
        self.file.write_bytes(DATA)
        os.chmod(self.file, 0o644)

    @property
    def file(self) -> Path:
        return self.root / 'images' / self.image_id

    def source(self) -> paths.SourceFile:
        return paths.resolve_source(str(self.file), None, {FS_ID: str(self.root)},
                                    FS_ID, self.image_id, len(DATA))

    def store(self, pin_dir=None, host='host-a') -> pins.PinStore:
        return pins.PinStore(pin_dir or self.pin_dir, self.state, host=host)


@pytest.fixture
def env(fs_dir, write_marker, tmp_path) -> Env:
    root = fs_dir('xfs')
    write_marker(root, FS_ID)
    return Env(root, tmp_path / 'state')


def test_pin_is_a_read_only_hard_link_of_the_inode(env):
    store = env.store()
    with env.source() as src:
        pin = store.pin(src, env.image_id)
    st = os.stat(env.file)
    assert pin.name == f'{env.image_id}.{st.st_ino}'
    assert pin.path == str(env.pin_dir / pin.name)
    assert os.path.samestat(os.stat(pin.path), st) and st.st_nlink == 2
    assert (pin.st_dev, pin.st_ino, pin.size) == (st.st_dev, st.st_ino, len(DATA))
    assert st.st_mode & 0o777 == 0o444          # Glance's path and the pin: one inode
    record = env.state / 'pins' / f'{pin.name}.json'
    assert os.stat(record).st_mode & 0o777 == 0o600
    assert json.loads(record.read_text())['users'] == []
    assert store.users(pin) == [] and store.pins() == [pin]
    # the point of a pin: Glance deleting its file does not take the data away
    os.chmod(env.file, 0o644)
    os.unlink(env.file)
    assert Path(pin.path).read_bytes() == DATA


def test_pin_of_the_same_inode_is_reused(env):
    with env.source() as src:
        first = env.store().pin(src, env.image_id)
    with env.source() as src:
        again = env.store().pin(src, env.image_id)      # another store object too
    assert again == first
    assert sorted(os.listdir(env.pin_dir)) == sorted([first.name, pins.HOST_FILE])
    assert os.stat(env.file).st_nlink == 2


def test_a_new_inode_gets_a_new_pin_and_the_old_one_stays(env):
    store = env.store()
    with env.source() as src:
        old = store.pin(src, env.image_id)
    new_file = env.file.with_name('upload')
    new_file.write_bytes(DATA)
    os.replace(new_file, env.file)
    with env.source() as src:
        new = store.pin(src, env.image_id)
    assert new.name != old.name and new.st_ino != old.st_ino
    assert os.path.exists(old.path) and os.path.exists(new.path)


def test_pin_name_taken_by_another_file(env):
    env.pin_dir.mkdir(parents=True)
    st = os.stat(env.file)
    squatter = env.pin_dir / f'{env.image_id}.{st.st_ino}'
    squatter.write_bytes(b'not the image')
    with env.source() as src, pytest.raises(PinError) as err:
        env.store().pin(src, env.image_id)
    assert str(squatter) in str(err.value) and 'not a link' in str(err.value)
    assert squatter.read_bytes() == b'not the image'


def test_users_recorded_once(env, tmp_path):
    store = env.store()
    with env.source() as src:
        pin = store.pin(src, env.image_id)
    disk = tmp_path / 'inst' / 'disk'
    store.add_user(pin, disk)               # before the disk exists: allowed
    store.add_user(pin, str(disk))
    store.add_user(pin, tmp_path / 'other')
    assert store.users(pin) == [str(disk), str(tmp_path / 'other')]
    store.remove_user(pin, tmp_path / 'other')
    assert store.users(pin) == [str(disk)]


def test_add_user_of_an_unrecorded_pin(env, tmp_path):
    fake = pins.Pin('x.1', str(env.pin_dir / 'x.1'), 'x', 1, 1, 1)
    with pytest.raises(PinError):
        env.store().add_user(fake, tmp_path / 'disk')


def test_release_only_when_no_user_exists(env, tmp_path):
    store = env.store()
    with env.source() as src:
        pin = store.pin(src, env.image_id)
    disks = [tmp_path / 'd1', tmp_path / 'd2']
    for disk in disks:
        disk.write_bytes(b'overlay')
        store.add_user(pin, disk)
    assert store.release_unused() == []
    os.unlink(disks[0])
    assert store.release_unused() == []                 # d2 still references it
    assert os.path.exists(pin.path)
    assert store.release_unused(still_needed=lambda p: True) == []
    os.unlink(disks[1])
    assert store.release_unused(still_needed=lambda p: p == pin) == []
    assert os.path.exists(pin.path)
    assert store.release_unused() == [pin]
    assert not os.path.exists(pin.path)
    assert env.file.read_bytes() == DATA                # Glance's file untouched
    assert store.pins() == [] and store.release_unused() == []


def test_a_pin_without_users_is_released(env):
    store = env.store()
    with env.source() as src:
        pin = store.pin(src, env.image_id)
    assert store.release_unused() == [pin]


def test_a_pin_without_a_record_is_never_released(env, caplog):
    store = env.store()
    with env.source() as src:
        pin = store.pin(src, env.image_id)
    os.unlink(env.state / 'pins' / f'{pin.name}.json')
    with caplog.at_level(logging.WARNING):
        assert store.release_unused() == []
    assert os.path.exists(pin.path) and 'no record' in caplog.text


def test_an_unreadable_record_keeps_its_pin(env, caplog):
    store = env.store()
    with env.source() as src:
        pin = store.pin(src, env.image_id)
    (env.state / 'pins' / f'{pin.name}.json').write_text('{broken')
    with caplog.at_level(logging.WARNING):
        assert store.release_unused() == []
    assert os.path.exists(pin.path) and 'cannot be read' in caplog.text


def test_a_pin_replaced_by_another_file_is_not_removed(env):
    store = env.store()
    with env.source() as src:
        pin = store.pin(src, env.image_id)
    os.unlink(pin.path)
    Path(pin.path).write_bytes(b'someone else')
    assert store.release_unused() == [pin]
    assert Path(pin.path).read_bytes() == b'someone else'


def test_users_on_an_unmounted_share_keep_the_pin(env, tmp_path):
    store = env.store()
    with env.source() as src:
        pin = store.pin(src, env.image_id)
    backing = tmp_path / 'instances-backing'
    backing.mkdir()
    (backing / 'disk').write_bytes(b'overlay')
    instances = tmp_path / 'instances'
    instances.mkdir()
    subprocess.run(['mount', '--bind', str(backing), str(instances)], check=True)
    try:
        store.add_user(pin, instances / 'disk')
    finally:
        subprocess.run(['umount', str(instances)], check=True)
    assert not (instances / 'disk').exists()
    assert store.release_unused() == []                 # not mounted: kept
    subprocess.run(['mount', '--bind', str(backing), str(instances)], check=True)
    try:
        assert store.release_unused() == []
        os.unlink(instances / 'disk')
        assert store.release_unused() == [pin]          # mounted and gone
    finally:
        subprocess.run(['umount', str(instances)], check=True)


def test_read_only_pin_dir(env, tmp_path):
    inner = env.root / 'ro'
    inner.mkdir()
    ro = tmp_path / 'ro-view'
    ro.mkdir()
    subprocess.run(['mount', '--bind', '-o', 'ro', str(inner), str(ro)], check=True)
    try:
        with env.source() as src, pytest.raises(PinError) as err:
            env.store(pin_dir=ro / 'pins').pin(src, env.image_id)
    finally:
        subprocess.run(['umount', str(ro)], check=True)
    message = str(err.value)
    assert str(ro / 'pins') in message and 'read-only' in message.lower()
    assert 'same mount as the Glance store' in message


def test_immutable_pin_dir(env):
    env.pin_dir.mkdir(parents=True)
    (env.pin_dir / pins.HOST_FILE).write_text('host-a\n')
    subprocess.run(['chattr', '+i', str(env.pin_dir)], check=True)
    try:
        with env.source() as src, pytest.raises(PinError) as err:
            env.store().pin(src, env.image_id)
    finally:
        subprocess.run(['chattr', '-i', str(env.pin_dir)], check=True)
    assert str(env.pin_dir) in str(err.value) and 'not usable' in str(err.value)
    assert os.listdir(env.pin_dir) == [pins.HOST_FILE]


def test_pin_dir_on_another_file_system(env, fs_dir):
    other = fs_dir('ext4') / 'pins'
    with env.source() as src, pytest.raises(PinError) as err:
        env.store(pin_dir=other).pin(src, env.image_id)
    assert str(other) in str(err.value) and 'another file system' in str(err.value)


def test_pin_dir_on_another_mount_of_the_same_file_system(env, tmp_path):
    (env.root / 'elsewhere').mkdir()
    view = tmp_path / 'view'
    view.mkdir()
    subprocess.run(['mount', '--bind', str(env.root / 'elsewhere'), str(view)],
                   check=True)
    try:
        with env.source() as src, pytest.raises(PinError) as err:
            env.store(pin_dir=view).pin(src, env.image_id)
    finally:
        subprocess.run(['umount', str(view)], check=True)
    assert 'another mount' in str(err.value)


def test_pin_dir_that_is_a_file(env):
    env.pin_dir.parent.mkdir(parents=True)
    env.pin_dir.write_text('')
    with env.source() as src, pytest.raises(PinError) as err:
        env.store().pin(src, env.image_id)
    assert str(env.pin_dir) in str(err.value)


def test_a_pin_dir_belongs_to_one_host(env):
    with env.source() as src:
        env.store().pin(src, env.image_id)
        with pytest.raises(PinError) as err:
            pins.PinStore(env.pin_dir, env.state.parent / 'state-b',
                          host='host-b').pin(src, env.image_id)
    assert "belongs to host 'host-a'" in str(err.value)


def test_a_state_dir_describes_one_pin_dir(env):
    with env.source() as src:
        env.store().pin(src, env.image_id)
        with pytest.raises(PinError) as err:
            env.store(pin_dir=env.root / 'other-pins').pin(src, env.image_id)
    assert 'own state directory' in str(err.value)


def test_deleted_source_cannot_be_pinned(env):
    with env.source() as src:
        os.unlink(env.file)
        with pytest.raises(PinError) as err:
            env.store().pin(src, env.image_id)
    assert 'deleted' in str(err.value)
    assert [n for n in os.listdir(env.pin_dir) if not n.startswith('.')] == []


def test_make_read_only_when_not_allowed(env, monkeypatch, caplog):
    def refuse(fd, mode):
        raise PermissionError(1, 'Operation not permitted')
    monkeypatch.setattr(pins.os, 'fchmod', refuse)
    with env.source() as src, caplog.at_level(logging.WARNING):
        assert pins.make_read_only(src.fd, 'the file') is False
    assert 'cannot be made read-only' in caplog.text


@pytest.mark.parametrize('bad', ['', '.x', 'a/b'])
def test_bad_image_id(env, bad):
    with env.source() as src, pytest.raises(ValueError):
        env.store().pin(src, bad)


def _worker(env: Env, disks_dir: str, n: int, worker: int) -> None:
    store = env.store()
    for i in range(n):
        with env.source() as src, store.locked():
            pin = store.pin(src, env.image_id)
            disk = os.path.join(disks_dir, f'disk-{worker}-{i}')
            with open(disk, 'w') as f:          # "qemu-img create" of the overlay
                f.write(pin.path)
            store.add_user(pin, disk)


def _releaser(env: Env, rounds: int) -> None:
    store = env.store()
    for _ in range(rounds):
        store.release_unused()


def test_pin_and_add_user_under_concurrency(env, tmp_path):
    """Workers pin, make a disk and record it while another process releases
    unused pins: every disk's pin exists and every disk is recorded."""
    disks = tmp_path / 'disks'
    disks.mkdir()
    env.store().pin(env.source(), env.image_id)     # the releaser has work at once
    ctx = multiprocessing.get_context('fork')
    procs = [ctx.Process(target=_worker, args=(env, str(disks), 15, w))
             for w in range(4)]
    procs.append(ctx.Process(target=_releaser, args=(env, 60)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    store = env.store()
    (pin,) = store.pins()
    assert os.path.exists(pin.path)
    made = sorted(str(d) for d in disks.iterdir())
    assert len(made) == 60 and sorted(store.users(pin)) == made
    assert all(Path(d).read_text() == pin.path for d in made)
