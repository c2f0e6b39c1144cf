"""Options of the ``[image_handlers]`` group of nova.conf.

Core options live here and in the copy engine (``copy/conf.py``); every handler
declares its own (``Handler.opts``) and they are gathered from the installed handlers
through stevedore, so a new handler adds options without touching this module.
``list_opts()`` is registered on the ``oslo.config.opts`` entry point, so
``oslo-config-generator --namespace image_handlers`` documents every option.
The ``[glance]`` group is Nova's own; we register the keystoneauth options there only
when Nova has not already (the command runs without Nova).
"""
from __future__ import annotations

import socket

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg
from oslo_log import log as logging

LOG = logging.getLogger(__name__)

GROUP = 'image_handlers'
GLANCE_GROUP = 'glance'
HANDLER_NAMESPACE = 'image_handlers.handlers'

handler_opts = [
    cfg.ListOpt(
        'handlers', default=['rbd_clone', 'stream_copy'],
        help='Ordered list of the handlers tried for every image. A name is a '
             'stevedore extension in the "image_handlers.handlers" namespace; run '
             '"image-handlers handlers" to list the installed ones. The first '
             'handler that accepts an image for a target serves it; every other '
             'handler\'s verdict is reported with its reason.'),
    cfg.DictOpt(
        'virt_driver_handlers', default={},
        help='Per-hypervisor override of "handlers": virt driver name to a '
             '"+"-separated ordered list, e.g. '
             '"libvirt:rbd_clone+shared_fs+stream_copy,vmwareapi:stream_copy". '
             'A virt driver not listed uses "images_type_handlers", then '
             '"handlers". An entry here wins over both, so a libvirt entry makes '
             '"images_type_handlers" unused for libvirt.'),
    cfg.DictOpt(
        'images_type_handlers', default={},
        help='Per-image-backend override of "handlers": a Nova [libvirt] '
             'images_type (rbd, qcow2, flat, raw, lvm, ploop) to a "+"-separated '
             'ordered list, e.g. "qcow2:iscsi_cor+shared_fs+stream_copy,'
             'rbd:rbd_clone+stream_copy". "default" means what Nova makes of it: '
             'qcow2 with [DEFAULT] use_cow_images, else flat; raw and flat are the '
             'same backend, so an entry for either serves both (the exact name '
             'first). Precedence: the "virt_driver_handlers" entry of the virt '
             'driver, then the entry of the images_type here, then "handlers". '
             'The command takes --images-type (default: [libvirt] images_type).'),
    cfg.StrOpt(
        'host', default=socket.gethostname(), sample_default='<hostname>',
        help='Name of this host as used in the "host_weights" metadata of image '
             'locations. Inside Nova, set it to the same value as [DEFAULT] host.'),
    cfg.StrOpt(
        'state_dir', default='/var/lib/image_handlers',
        help='Directory kept on this host (owned by the service user) for locks, '
             'measured per-location throughput, jobs that go on after a disk is '
             'returned, and verification verdicts of zero-copy sources. Never '
             'stored in Glance.'),
    cfg.BoolOpt(
        'prefer_measured_throughput', default=True,
        help='Among locations of equal weight, try the one with the best '
             'throughput measured on this host first. Locations not measured yet '
             'are tried before measured ones so that each gets measured once.'),
    cfg.FloatOpt(
        'location_failure_half_life', default=600.0, min=0,
        help='Seconds in which the failure score a location earns on this host '
             'halves. Each failure (unreadable, timed out, wrong bytes) adds 1 and '
             'a success halves it; while the score is above 0.5 the location is '
             'tried after healthy ones of equal weight: one failure for one '
             'half-life, two for two, four for three. 0 disables it.'),
    cfg.BoolOpt(
        'allow_unverified_copies', default=False,
        help='Copy images that have neither os_hash_value nor checksum. Off by '
             'default: without a recorded hash nothing proves the bytes are the '
             'image\'s.'),
    cfg.BoolOpt(
        'nova_integration', default=False,
        help='Inside a Nova patched with nova_patches/: provide the disks of '
             'instances through the handler chain (an RBD root disk by '
             'rbd_clone; image files in Nova\'s _base directory by the chain, '
             'before Nova\'s own format checks and conversion). Off, the '
             'patched Nova behaves exactly as an unpatched one.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register our group (core, copy engine and every installed handler's options)
    and the ``[glance]`` options Nova would have."""
    conf.register_opts(_core_opts(), group=GROUP)
    for handler in _installed_handler_classes():
        handler.register_opts(conf)
    _register_glance_opts(conf)
    _register_nova_backend_opts(conf)


def register_missing(conf: cfg.ConfigOpts, opts, group: str) -> None:
    """Register only options not already known (Nova registers [glance] itself)."""
    known = set(conf[group].keys()) if group in conf else set()
    for opt in opts:
        if opt.dest not in known:
            conf.register_opt(opt, group=group)


def _core_opts() -> list[cfg.Opt]:
    from image_handlers.copy.conf import copy_opts  # the copy command's, too
    from image_handlers.trust.policy import trust_opts
    return handler_opts + copy_opts + trust_opts


def _installed_handler_classes() -> list:
    """Handler classes of every installed entry point (not instantiated), as
    glance_store gathers its drivers' options."""
    import stevedore
    manager = stevedore.ExtensionManager(HANDLER_NAMESPACE, invoke_on_load=False,
                                         on_load_failure_callback=_not_loadable)
    return [ext.plugin for ext in sorted(manager, key=lambda e: e.name)]


def _not_loadable(manager, entrypoint, exc) -> None:
    LOG.warning('image handler %s could not be loaded, its options are not '
                'registered: %s', entrypoint.name, exc)


def _register_glance_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(cfg.OptGroup(GLANCE_GROUP))
    register_missing(conf, [
        cfg.IntOpt('num_retries', default=3, min=0,
                   help='Retries of a failed Glance API call (Nova\'s option).'),
    ], GLANCE_GROUP)
    from image_handlers.trust.policy import nova_glance_opts
    register_missing(conf, nova_glance_opts, GLANCE_GROUP)
    register_missing(conf, ks_loading.get_session_conf_options(), GLANCE_GROUP)
    register_missing(conf, ks_loading.get_auth_common_conf_options(), GLANCE_GROUP)
    register_missing(conf, ks_loading.get_adapter_conf_options(), GLANCE_GROUP)
    conf.set_default('service_type', 'image', group=GLANCE_GROUP)


def _register_nova_backend_opts(conf: cfg.ConfigOpts) -> None:
    """Nova's image backend choice, so the command reads it from nova.conf too."""
    conf.register_group(cfg.OptGroup('libvirt'))
    register_missing(conf, [
        cfg.StrOpt('images_type', default='default',
                   help='Nova\'s image backend of instance disks (Nova\'s option).'),
    ], 'libvirt')
    if 'use_cow_images' not in conf:       # [DEFAULT]
        conf.register_opt(cfg.BoolOpt(
            'use_cow_images', default=True,
            help='Nova\'s qcow2 instance disks for images_type "default" '
                 '(Nova\'s option).'))


def list_opts():
    """oslo-config-generator entry point: the core options, then each installed
    handler's, each option once."""
    opts: dict[str, cfg.Opt] = {}
    for opt in _core_opts() + [o for h in _installed_handler_classes() for o in h.opts]:
        opts.setdefault(opt.dest, opt)
    return [(GROUP, list(opts.values()))]


# Nova's images_type values that name the same backend (imagebackend.Flat).
_SAME_BACKEND = {'raw': 'flat', 'flat': 'raw'}


def effective_images_type(conf: cfg.ConfigOpts,
                          name: str | None = None) -> str | None:
    """Nova's image backend: ``name``, default ``[libvirt] images_type``, with
    "default" resolved as Nova's imagebackend does (qcow2 with use_cow_images, else
    flat); None when neither is known."""
    if name is None:
        try:
            name = conf.libvirt.images_type
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
            return None
    if name == 'default':
        try:
            cow = conf.use_cow_images
        except cfg.NoSuchOptError:
            cow = True
        return 'qcow2' if cow else 'flat'
    return name or None


def handler_order(conf: cfg.ConfigOpts, virt_driver: str | None,
                  images_type: str | None = None) -> list[str]:
    """The ordered handler names enabled for ``virt_driver`` and the image backend
    ``images_type``: the virt driver's entry in virt_driver_handlers, else the
    backend's in images_type_handlers, else ``handlers``."""
    group = conf[GROUP]
    override = group.virt_driver_handlers.get(virt_driver or '') if virt_driver else None
    backend = effective_images_type(conf, images_type) if images_type else None
    if override is None and backend:
        by_backend = group.images_type_handlers
        override = by_backend.get(backend)
        if override is None and backend in _SAME_BACKEND:
            override = by_backend.get(_SAME_BACKEND[backend])
    if override is not None:
        return [n.strip() for n in override.split('+') if n.strip()]
    return [n.strip() for n in group.handlers if n.strip()]
