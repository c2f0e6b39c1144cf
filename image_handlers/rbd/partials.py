"""Partial clones failed requests left behind (``NAME.image_handlers-partial``).

rbd_clone makes a clone under a partial name and publishes it by rename. When the
cluster stops answering half way, the partial stays, and only the next request for
the same disk removes it; an instance that was deleted or rescheduled never asks
again. ``image-handlers cleanup`` and Nova's image cache manager pass remove such
partials here. A partial is never resumed, so neither the image's existence nor
``partial_max_age`` matters. What matters is that no request is still working on it:
- a client that has it open (resizing, flattening, or a client that lost the cluster
  and has not yet timed out) is one of its watchers: kept;
- a clone made in the last MIN_AGE seconds may be about to be opened or renamed by
  the request that made it: kept.
The removal itself fails with ImageBusy when a client opened it meanwhile (kept).
"""
from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Iterable

from oslo_log import log as logging

from image_handlers import exceptions
from image_handlers.cleanup import ABANDONED, HELD, KEPT, Leftover
from image_handlers.rbd import cluster as rbd_cluster

LOG = logging.getLogger(__name__)

SUFFIX = '.image_handlers-partial'
# Longer than Ceph's watch timeout (osd_client_watch_timeout, 30 s) and than the
# moment between clone() and open() or rename() in rbd_clone.
MIN_AGE = 60.0


def sweep(cluster: rbd_cluster.Cluster, pools: Iterable[str], dry_run: bool = False,
          now: Callable[[], float] = time.time) -> list[Leftover]:
    """Every partial clone in ``pools`` of ``cluster``, and what was done with it."""
    found = []
    for pool in sorted(set(pools)):
        with cluster.ioctx(pool) as ioctx:
            try:
                names = rbd_cluster.rbd.RBD().list(ioctx)
            except rbd_cluster.rbd.Error as exc:
                raise exceptions.SourceError(
                    f'rbd: cannot list pool {pool!r} of cluster {cluster.fsid}: '
                    f'{exc}') from exc
            for name in sorted(n for n in names if n.endswith(SUFFIX)):
                found.append(_one(ioctx, pool, name, dry_run, now()))
    for leftover in found:
        if leftover.removed:
            LOG.info('%s partial clone %s (%d bytes): %s',
                     'would remove' if dry_run else 'removed', leftover.partial,
                     leftover.size, leftover.reason)
    return found


def _one(ioctx, pool: str, name: str, dry_run: bool, now: float) -> Leftover:
    rbd = rbd_cluster.rbd
    where = f'rbd:{pool}/{name}'
    try:
        with rbd.Image(ioctx, name, read_only=True) as image:
            created = calendar.timegm(image.create_timestamp().utctimetuple())
            watchers = [w.get('addr', '?') for w in image.watchers_list()]
            size = _allocated(image)
            parent = _parent(image)
    except rbd.ImageNotFound:
        return Leftover(where, None, 0.0, 0, KEPT, 'gone meanwhile (its request '
                        'removed or published it)')
    leftover = Leftover(where, parent, age=max(0.0, now - created), size=size)
    if watchers:
        leftover.outcome = HELD
        leftover.reason = f'open by {", ".join(watchers)} (a request still working on it)'
        return leftover
    if leftover.age < MIN_AGE:
        leftover.reason = (f'made {leftover.age:.0f} s ago: its request may be about '
                           f'to publish it')
        return leftover
    leftover.outcome = ABANDONED
    leftover.reason = (f'a clone no request is working on (nobody has it open, made '
                       f'{leftover.age:.0f} s ago); never resumed')
    if dry_run:
        return leftover
    try:
        rbd.RBD().remove(ioctx, name)
    except rbd.ImageBusy:
        leftover.outcome, leftover.reason = HELD, 'opened while being removed'
    except rbd.ImageNotFound:
        leftover.outcome, leftover.reason = KEPT, 'gone meanwhile'
    return leftover


def _allocated(image) -> int:
    """Bytes the clone holds itself (objects written in it, not its parent's)."""
    total = [0]

    def count(offset, length, exists):
        if exists:
            total[0] += length
    image.diff_iterate(0, image.size(), None, count, include_parent=False,
                       whole_object=True)
    return total[0]


def _parent(image) -> str | None:
    """The Glance image id the clone came from (Glance's rbd store names the RBD
    image after it), for the report."""
    try:
        return image.get_parent_image_spec()['image_name']
    except (rbd_cluster.rbd.ImageNotFound, KeyError):
        return None

