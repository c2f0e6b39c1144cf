"""The calls a patched Nova makes (nova_patches/); everything else is Nova's.

``zero_copy_first`` wraps the fetch function ``LibvirtDriver._try_fetch_image_cache``
passes to a disk's ``cache()``. For Nova's Rbd backend the chain creates the disk
itself (rbd_clone: O(1), every location claim checked). When it cannot, the image
is downloaded and Nova imports it, as Nova does for a foreign cluster; Nova's
own clone is never tried on a location the chain refused, since it does not
check that a location names the image's own data.

``provide_disk`` comes first for Nova's Qcow2 backend: a zero-copy handler makes
the instance disk itself (an iscsi_cor copy-on-read overlay on the image's LUN, a
shared_fs overlay on a pin of the shared file), and no ``_base`` is fetched.
``precache`` comes first in ``cache_image`` (aggregate image pre-caching): an RBD
host makes the image ready in its cluster instead of filling ``_base``.
``guest_xml`` opens disks still filling from a LUN with ``copy_on_read='on'`` and
hands their fill to the guest's qemu; ``release`` stops the fills of an instance
that leaves the host.

``download`` is asked first by ``nova.virt.images.fetch``, the download step of
``fetch_to_raw``: the chain makes Nova's ``.part`` file -- a reflink (or an allowed
hardlink) by shared_fs when Glance's store is a shared mount and ``_base`` is on
it, never a symbolic link (Nova copies ``_base`` with ``cp -r``), else a copy by
stream_copy (verified, resumable, O_DIRECT) -- and Nova's own format inspection,
backing-file and data-file refusal and raw conversion then run on it as before.

Both do nothing unless ``[image_handlers] nova_integration`` is on. A fallback to
Nova's own path is logged at WARNING with every reason, never silently.

Signatures hold on every path: with ``[glance] verify_glance_signatures`` or an
instance's trusted certificates, every handler proves the image's signature
(a copy in the same pass as its hash, a clone or shared file once per source
identity), reading the certificate with the request's context as Nova does. An
image no path could trust (unsigned, certificate missing or untrusted, unknown
hash algorithm, no hash at all) is ImageUnacceptable: it is never handed to a
Nova path instead.
"""
from __future__ import annotations

import os
import threading
import xml.etree.ElementTree as ET
from typing import Callable

from oslo_concurrency import lockutils
from oslo_log import log as logging

import nova.conf
from nova.compute import task_states
from nova.compute import vm_states
from nova import exception as nova_exception
from nova.virt.libvirt import imagebackend
from nova.virt.libvirt import utils as libvirt_utils

from image_handlers import conf as ih_conf
from image_handlers import exceptions
from image_handlers.chain import HandlerChain
from image_handlers.iscsi import fill as lun_fill
from image_handlers.jobs import runner as jobs_runner
from image_handlers.nova.image_source import NovaImageSource
from image_handlers.results import FetchResult
from image_handlers.targets import FILE, RBD, FileTarget, RbdTarget

LOG = logging.getLogger(__name__)
CONF = nova.conf.CONF
ih_conf.register_opts(CONF)

FetchFunc = Callable[..., None]

_PURPOSE_OF_TASK = {
    task_states.RESCUING: 'rescue',
    task_states.REBUILD_SPAWNING: 'rebuild',
    task_states.MIGRATING: 'live_migration',
    task_states.RESIZE_FINISH: 'resize',
}

_chains: dict[str | None, HandlerChain] = {}     # by images_type
_chain_lock = threading.Lock()


def enabled() -> bool:
    return CONF[ih_conf.GROUP].nova_integration


def chain(images_type: str | None = None) -> HandlerChain:
    """One chain per process and image backend (``images_type``, default this
    host's [libvirt] images_type: [image_handlers] images_type_handlers may give
    each its own order): handlers load once, RADOS connections are kept. Jobs
    whose worker died with an earlier nova-compute are resumed with the first."""
    backend = ih_conf.effective_images_type(CONF, images_type)
    with _chain_lock:
        if backend not in _chains:
            first = not _chains
            _chains[backend] = HandlerChain(CONF, virt_driver='libvirt',
                                            images_type=backend)
            if first:
                try:
                    jobs_runner.resume_orphans(CONF)
                except Exception as exc:  # noqa: BLE001 - never block a boot on this
                    LOG.error('image_handlers: could not resume unfinished jobs: %s',
                              exc)
        return _chains[backend]


def reset() -> None:
    """Forget the chains, so the next request reads the configuration again."""
    with _chain_lock:
        _chains.clear()


def purpose_of(instance) -> str:
    """Why Nova needs the disk, in the words of [image_handlers]
    rbd_flatten_purposes."""
    if instance.vm_state == vm_states.SHELVED_OFFLOADED:
        return 'unshelve'
    migration = instance.migration_context
    if migration is not None and migration.is_cross_cell_move():
        return 'cross_cell_move'
    return _PURPOSE_OF_TASK.get(instance.task_state, 'spawn')


def rbd_target(backend) -> RbdTarget | None:
    """The RBD image Nova's Rbd backend would create, or None for other backends."""
    if not isinstance(backend, imagebackend.Rbd):
        return None
    return RbdTarget(kind=RBD, pool=backend.driver.pool, name=backend.rbd_name)


def zero_copy_first(backend, fetch_func: FetchFunc, context, image_id: str,
                    instance, size: int | None) -> FetchFunc:
    """The fetch function ``backend.cache()`` should call."""
    disk = rbd_target(backend) if enabled() else None
    if disk is None:
        return fetch_func       # file-backed disks: download() serves them
    purpose = purpose_of(instance)

    def fetch(context, target: str, image_id: str, trusted_certs=None) -> None:
        """Nova's fetch function signature; ``target`` is the _base file Nova
        imports when the disk does not exist afterwards."""
        if _provide(context, image_id, disk, purpose, size,
                    trusted_certs=trusted_certs) is not None:
            return
        if CONF.workarounds.never_download_image_if_on_rbd:
            raise nova_exception.ImageUnacceptable(
                image_id=image_id,
                reason=f'no handler could clone it into {disk.display} and '
                       f'[workarounds] never_download_image_if_on_rbd is set')
        LOG.warning('image %s: downloading it to %s for Nova to import into %s: no '
                    'handler could clone it (reasons above); Nova\'s own clone is '
                    'not tried on locations the handlers refused', image_id,
                    target, disk.display)
        libvirt_utils.fetch_image(context, target, image_id, trusted_certs)

    return fetch


def provide_disk(backend, context, image_id: str, instance, size: int | None) -> bool:
    """For Nova's Qcow2 backend: let a zero-copy handler make the instance disk
    itself (an iscsi_cor overlay on the image's LUN, a shared_fs overlay on a pin),
    so no _base file is fetched at all. True when the disk now exists. Only
    zero-copy handlers may: a copied qcow2 would skip Nova's format checks."""
    if not enabled() or not isinstance(backend, imagebackend.Qcow2) or backend.exists():
        return False
    target = FileTarget(kind=FILE, path=backend.path, disk_format='qcow2')
    os.makedirs(os.path.dirname(backend.path), exist_ok=True)
    result = _provide(context, image_id, target, purpose_of(instance), size,
                      zero_copy_only=True, trusted_certs=instance.trusted_certs)
    if result is None:
        return False
    LOG.info('image %s: instance disk %s made by %s (%s); %s', image_id,
             backend.path, result.handler, result.method,
             f'job {result.job} completes it' if result.job else 'complete')
    return True


def precache(context, image_id: str) -> bool | None:
    """``LibvirtDriver.cache_image`` (compute API 2.81 pre-caching) asks first.

    An RBD host needs no ``_base`` file: the chain makes the image ready in the
    local cluster instead (its snapshot verified once, or the image copied into
    the cluster by Glance) so the first boot is O(1). True when that took work
    (Nova reports 'cached'), False when it was ready ('existing'). None for file
    backends: Nova's own cache_image writes ``_base`` through images.fetch, so
    through ``download``. ImageUnacceptable (Nova reports 'error') naming every
    reason when this host cannot use the image."""
    if not enabled() or CONF.libvirt.images_type != 'rbd':
        return None
    probe = RbdTarget(kind=RBD, pool=CONF.libvirt.images_rbd_pool,
                      name=f'image-handlers-precache-{image_id}')   # never made
    handlers = chain()
    try:
        # Nova pre-caches [image_cache] precache_concurrency images at once: the
        # same image twice would read (or copy) it twice.
        with lockutils.lock(f'image-handlers-precache-{image_id}'):
            request = handlers.request(image_id, probe, 'precache', None,
                                       source=NovaImageSource(context))
            result = handlers.prepare(request)
    except (exceptions.NoHandlerAvailable, exceptions.BadInput) as exc:
        LOG.error('image %s: cannot be pre-cached for RBD disks on this host: %s',
                  image_id, exc)
        raise nova_exception.ImageUnacceptable(image_id=image_id, reason=str(exc))
    return result.method != 'nothing'


def cache_manager_pass(context, base_dir: str) -> None:
    """Nova's image cache manager pass (``ImageCacheManager.update``) ends here:
    partial copies in its ``_base`` directory that nobody will resume are removed
    (the image is gone from Glance, or not resumed for ``partial_max_age``), never
    one a running copy holds, and so are the enabled handlers' other leftovers
    (partial RBD clones no request works on); the pass's log says what went. The pass runs
    with an admin context that may carry no token: when Glance cannot be asked,
    only the age rule removes anything."""
    if not enabled():
        return
    from image_handlers import cleanup
    from image_handlers.copy.conf import copy_options
    group = CONF[ih_conf.GROUP]
    # The pass's admin context often has no token: not worth a warning each pass.
    gone = cleanup.image_gone_asker(lambda: NovaImageSource(context),
                                    (nova_exception.ImageNotFound,), quiet=True)
    try:
        done = cleanup.sweep([base_dir], gone, cleanup.max_age_of(group.partial_max_age),
                             lock_dir=copy_options(group).lock_dir)
    except exceptions.ImageHandlerError as exc:
        LOG.warning('image_handlers: could not clean partial copies in %s: %s',
                    base_dir, exc)
        done = cleanup.Sweep([])
    # And what failed requests left outside _base (rbd_clone's partial clones):
    # a handler that cannot look says so in its own warning.
    try:
        cleanup.sweep_handlers(done, chain().handlers)
    except exceptions.ImageHandlerError as exc:     # handlers do not load
        LOG.warning('image_handlers: could not look for leftovers: %s', exc)
    if done.leftovers:
        LOG.info('image_handlers: partial copies in %s: %d removed (%d bytes), %d '
                 'kept%s', base_dir, len(done.removed), done.freed,
                 len(done.leftovers) - len(done.removed),
                 ''.join(f'; {l.partial}: {l.reason}' for l in done.leftovers))


def guest_xml(xml: str, instance) -> str:
    """Open disks that still fill from a LUN with copy_on_read='on', and hand their
    fill over to the guest's qemu (the offline fill lets go of the disk first)."""
    if not enabled():
        return xml
    filling = _fills_under(libvirt_utils.get_instance_path(instance))
    if not filling:
        return xml
    root = ET.fromstring(xml)
    for disk in root.iter('disk'):
        source, driver = disk.find('source'), disk.find('driver')
        path = source.get('file') if source is not None else None
        job = filling.get(os.path.realpath(path)) if path else None
        if job is None or driver is None:
            continue
        driver.set('copy_on_read', 'on')
        if not lun_fill.release_for_guest(CONF[ih_conf.GROUP].state_dir, job.id,
                                          CONF[ih_conf.GROUP].iscsi_handover_timeout):
            raise nova_exception.InternalError(
                f'image_handlers: fill job {job.id} of {path} did not let go of the '
                f'disk in time, so no guest may open it yet')
        LOG.info('instance disk %s opened copy-on-read; job %s continues in the '
                 'guest', path, job.id)
    return ET.tostring(root, encoding='unicode')


def release(instance) -> None:
    """The instance leaves this host (delete, migration): its disks' fills stop,
    and what they held is released."""
    if not enabled():
        return
    for path, job in _fills_under(libvirt_utils.get_instance_path(instance)).items():
        jobs_runner.cancel(CONF, job.id)
        LOG.info('instance disk %s: fill job %s cancelled, the instance leaves this '
                 'host', path, job.id)


def _fills_under(directory: str) -> dict:
    """Unfinished fill jobs of disks in ``directory``, by the disk's real path."""
    base = os.path.realpath(directory)
    found = {}
    for job in jobs_runner.store(CONF).all():
        disk = job.params.get('disk') if job.kind == 'lun_fill' else None
        if disk and not job.finished and os.path.realpath(disk).startswith(base + '/'):
            found[os.path.realpath(disk)] = job
    return found


def download(context, image_href: str, path: str, trusted_certs=None) -> bool:
    """Write image ``image_href`` to ``path`` through the chain; False leaves the
    download to Nova (the reason logged). An image without a recorded hash is
    refused (ImageUnacceptable) unless [image_handlers] allow_unverified_copies:
    handing it to Nova would download it unverified, the very thing refused."""
    if not enabled():
        return False
    image_id = image_href.rstrip('/').rsplit('/', 1)[-1]
    # fetch_to_raw renames PATH (``<_base file>.part``) once its checks pass.
    final = path[:-len('.part')] if path.endswith('.part') else None
    return _provide(context, image_id, FileTarget(kind=FILE, path=path,
                                                  final_path=final, regular_file=True),
                    'spawn', None, require_hash=True,
                    trusted_certs=trusted_certs) is not None


def _provide(context, image_id: str, target, purpose: str, size: int | None,
             require_hash: bool = False, zero_copy_only: bool = False,
             trusted_certs=None) -> FetchResult | None:
    """The chain's result, or None when no handler could (reasons logged).
    ImageUnacceptable when no path could trust the image (nor may Nova's)."""
    handlers = chain()
    try:
        request = handlers.request(
            image_id, target, purpose, size, source=NovaImageSource(context),
            zero_copy_only=zero_copy_only,
            trusted_certs=list(trusted_certs.ids) if trusted_certs else None)
        if require_hash and request.expect.unverifiable:
            raise nova_exception.ImageUnacceptable(
                image_id=image_id, reason=request.expect.unverifiable)
        return handlers.fetch(request)
    except exceptions.Untrusted as exc:
        LOG.error('image %s: refused on every path: %s', image_id, exc)
        raise nova_exception.ImageUnacceptable(image_id=image_id, reason=str(exc))
    except exceptions.NoHandlerAvailable:
        return None         # the chain logged every reason already
    except exceptions.BadInput as exc:
        LOG.warning('image %s: image_handlers cannot provide %s: %s', image_id,
                    target.display, exc)
        return None
