"""Clean-up of copies that stopped and were never resumed.

A stopped copy keeps ``.<name>.part`` and its checkpoint ``.<name>.part.json``
beside its target, so the next copy resumes. Those nobody resumes fill disks: a
partial whose image is gone from Glance, or older than ``partial_max_age``, is
removed by ``image-handlers cleanup`` and by Nova's image cache manager pass.
Never one a running copy holds: a copy holds the image's lock (``state_dir/locks``)
and an flock on its partial; the sweep takes both without waiting, skips the
partial when either is held, and removes it under them, so a copy starting
meanwhile waits for the image lock (a moment) and then finds no half-removed
state. When
Glance cannot be asked, nothing is removed for being gone.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from oslo_log import log as logging

from image_handlers import exceptions
from image_handlers.copy import checkpoint, locking
from image_handlers.copy.checkpoint import CopyPaths

LOG = logging.getLogger(__name__)

PART = '.part'
GONE, OLD, HELD, KEPT = 'image gone', 'too old', 'held', 'kept'
ABANDONED = 'abandoned'     # a partial no request works on and none resumes (RBD)


@dataclasses.dataclass
class Leftover:
    partial: str
    image_id: str | None
    age: float                      # seconds since the copy last wrote
    size: int                       # bytes the partial and checkpoint take
    outcome: str = KEPT             # GONE or OLD (removed), HELD or KEPT
    reason: str = ''

    @property
    def removed(self) -> bool:
        return self.outcome in (GONE, OLD, ABANDONED)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {'removed': self.removed}


@dataclasses.dataclass
class Sweep:
    leftovers: list[Leftover]
    dry_run: bool = False
    errors: list[str] = dataclasses.field(default_factory=list)  # what was not swept

    @property
    def removed(self) -> list[Leftover]:
        return [l for l in self.leftovers if l.removed]

    @property
    def freed(self) -> int:
        return sum(l.size for l in self.removed)

    def to_dict(self) -> dict:
        return {'dry_run': self.dry_run, 'removed': len(self.removed),
                'freed_bytes': self.freed, 'errors': list(self.errors),
                'leftovers': [l.to_dict() for l in self.leftovers]}


ImageGone = Callable[[str], bool | None]    # True gone, False there, None unknown


def sweep(directories: Iterable[str], image_gone: ImageGone | None,
          max_age: float | None, dry_run: bool = False, lock_dir: str | None = None,
          now: Callable[[], float] = time.time) -> Sweep:
    """Every leftover partial in ``directories`` (not recursive), and what was done
    with it. ``max_age`` None: age alone removes nothing. ``lock_dir``: where the
    copies' per-image locks are (stream_copy: ``state_dir/locks``)."""
    found = []
    for directory in directories:
        for target in _targets(directory):
            found.append(_one(CopyPaths.for_target(target), image_gone, max_age,
                              dry_run, lock_dir, now()))
    for leftover in found:
        if leftover.removed:
            LOG.info('%s %s (%d bytes): %s', 'would remove' if dry_run else 'removed',
                     leftover.partial, leftover.size, leftover.reason)
    return Sweep(found, dry_run)


def sweep_handlers(done: Sweep, handlers: Iterable[Any]) -> Sweep:
    """Add what each handler's failed requests left elsewhere (``leftovers()``:
    an RBD partial clone). A handler that cannot look (its cluster is down) is an
    error in ``done.errors``, not a silent nothing, and the others still run."""
    for handler in handlers:
        try:
            done.leftovers.extend(handler.leftovers(done.dry_run))
        except exceptions.ImageHandlerError as exc:
            LOG.warning('cleanup: %s could not look for its leftovers: %s',
                        handler.name, exc)
            done.errors.append(f'{handler.name}: {exc}')
    return done


def _targets(directory: str) -> list[str]:
    """Targets whose partial or checkpoint is in ``directory``."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise exceptions.BadInput(f'cannot list {directory}: {exc.strerror}') from exc
    targets = set()
    for name in names:
        for suffix in (PART, PART + '.json', PART + '.json.tmp'):
            if name.startswith('.') and name.endswith(suffix) and len(name) > len(suffix) + 1:
                targets.add(os.path.join(directory, name[1:-len(suffix)]))
    return sorted(targets)


def _one(paths: CopyPaths, image_gone: ImageGone | None, max_age: float | None,
         dry_run: bool, lock_dir: str | None, now: float) -> Leftover:
    saved = checkpoint.load(paths)
    files = [p for p in (paths.partial, paths.checkpoint, paths.checkpoint_tmp)
             if os.path.lexists(p)]
    stats = [os.lstat(p) for p in files]
    leftover = Leftover(paths.partial, saved.image_id if saved else None,
                        age=now - max(st.st_mtime for st in stats),
                        size=sum(st.st_blocks * 512 for st in stats))
    image_lock = (_lock(locking.lock_path(lock_dir, f'image-{leftover.image_id}'))
                  if lock_dir and leftover.image_id else -1)
    fd = _lock(paths.partial) if image_lock is not None else None
    if fd is None:
        if image_lock is not None and image_lock >= 0:
            os.close(image_lock)
        leftover.outcome, leftover.reason = HELD, 'a running copy holds it'
        return leftover
    try:
        gone = image_gone(leftover.image_id) if image_gone and leftover.image_id else None
        if gone:
            leftover.outcome = GONE
            leftover.reason = f'image {leftover.image_id} no longer exists in Glance'
        elif max_age is not None and leftover.age > max_age:
            leftover.outcome = OLD
            leftover.reason = (f'not resumed for {leftover.age:.0f} s (more than '
                               f'[image_handlers] partial_max_age, {max_age:.0f} s)')
        else:
            leftover.reason = ('kept for a resume' if saved else
                               'kept: no checkpoint says what it is, and it is not old')
            return leftover
        if not dry_run:
            checkpoint.remove(paths)        # under our lock: no copy is using it
        return leftover
    finally:
        for held in (fd, image_lock):
            if held >= 0:
                os.close(held)


def _lock(path: str) -> int | None:
    """An fd holding the partial's flock (-1 when there is no partial), or None
    when a running copy holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return -1           # a checkpoint alone: nothing can hold it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def max_age_of(seconds: float) -> float | None:
    """``partial_max_age`` as sweep() takes it: 0 turns the age rule off."""
    return float(seconds) if seconds > 0 else None


def image_gone_asker(make_source: Callable[[], Any],
                     not_found: tuple[type[BaseException], ...] = (
                         exceptions.ImageNotFound,),
                     quiet: bool = False) -> ImageGone:
    """Whether an image is gone, asked of an ImageSource (made on first use): True
    for ``not_found``, None when it cannot be asked (nothing is removed then;
    logged at WARNING, or DEBUG when ``quiet``)."""
    source = None

    def gone(image_id: str) -> bool | None:
        nonlocal source
        try:
            source = source or make_source()
            source.get_image(image_id)
        except not_found:
            return True
        except Exception as exc:  # noqa: BLE001 - unknown: keep the partial
            (LOG.debug if quiet else LOG.warning)(
                'cannot ask Glance whether image %s still exists (%s): its partial '
                'copies are kept unless old', image_id, exc)
            return None
        return False
    return gone


def glance_asker(conf) -> ImageGone:
    """``image_gone_asker`` with nova.conf's [glance]."""
    from image_handlers.glance import GlanceReader
    return image_gone_asker(lambda: GlanceReader(conf))
