"""Options of the ``[image_handlers]`` group of nova.conf.

``list_opts()`` is registered on the ``oslo.config.opts`` entry point, so
``oslo-config-generator --namespace image_handlers`` documents every option.
The ``[glance]`` group is Nova's own; we register the keystoneauth options there only
when Nova has not already (the command runs without Nova).
"""
from __future__ import annotations

import socket

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

GROUP = 'image_handlers'
GLANCE_GROUP = 'glance'

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
             'A virt driver not listed uses "handlers".'),
    cfg.StrOpt(
        'host', default=socket.gethostname(), sample_default='<hostname>',
        help='Name of this host as used in the "host_weights" metadata of image '
             'locations. Inside Nova, set it to the same value as [DEFAULT] host.'),
    cfg.StrOpt(
        'state_dir', default='/var/lib/image_handlers',
        help='Directory kept on this host for locks and measured per-location '
             'throughput. Never stored in Glance.'),
    cfg.BoolOpt(
        'prefer_measured_throughput', default=True,
        help='Among locations of equal weight, try the one with the best '
             'throughput measured on this host first. Locations not measured yet '
             'are tried before measured ones so that each gets measured once.'),
    cfg.ListOpt(
        'http_location_allowed_hosts', default=[],
        help='Hosts (names or addresses, optionally host:port) whose http(s) '
             'image locations may be read directly. Any other http(s) location is '
             'refused, because a location is a claim made by whoever added it and '
             'reading it from a compute host could reach internal services. The '
             'image data API of Glance itself is always allowed.'),
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
    cfg.IntOpt(
        'glance_api_weight', default=0,
        help='Weight of Glance\'s own image data API among the locations of an '
             'image (location metadata "weight" works the same way; higher is '
             'tried first).'),
]

stream_copy_opts = [
    cfg.IntOpt('copy_buffer_size', default=8 * 1024 * 1024, min=64 * 1024,
               help='Bytes per read from the source. Large buffers keep the copy '
                    'bound by the network and the hash, not by Python.'),
    cfg.IntOpt('bandwidth_limit', default=0, min=0,
               help='Maximum bytes per second of one copy; 0 means unlimited. Use '
                    'it so a download does not starve the instances on this host.'),
    cfg.IntOpt('copy_retries', default=5, min=0,
               help='How many times a dropped or failed transfer is resumed within '
                    'one request before giving up (the partial file is kept for the '
                    'next request).'),
    cfg.FloatOpt('copy_retry_backoff', default=0.5, min=0,
                 help='Seconds before the first retry; doubles on each retry.'),
    cfg.FloatOpt('copy_retry_backoff_max', default=30.0, min=0,
                 help='Longest wait between two retries, in seconds.'),
    cfg.IntOpt('checkpoint_interval', default=64 * 1024 * 1024, min=1024 * 1024,
               help='Bytes between two durable checkpoints of a copy: after a crash '
                    'or kill -9 at most this much is fetched again.'),
    cfg.FloatOpt('progress_interval', default=10.0, min=0.1,
                 help='Seconds between two progress lines of a copy in the log.'),
    cfg.FloatOpt('connect_timeout', default=10.0, min=0.1,
                 help='Seconds to wait for a source to accept a connection.'),
    cfg.FloatOpt('read_timeout', default=60.0, min=0.1,
                 help='Seconds to wait for the next bytes from a source.'),
    cfg.BoolOpt('sparse', default=True,
                help='Do not write blocks that are all zero (the file stays sparse).'),
    cfg.BoolOpt('direct_io', default=True,
                help='Write image data with O_DIRECT where the file system supports '
                     'it: the bytes bypass the page cache, so a large copy neither '
                     'evicts the pages instances on this host use nor spends about '
                     'a second of kernel CPU per GiB filling the cache. Unaligned '
                     'heads and tails, and file systems without O_DIRECT, are '
                     'written through the page cache.'),
]


rbd_opts = [
    cfg.StrOpt('rbd_ceph_conf',
               help='ceph.conf of the cluster that holds instance disks. Default: '
                    '[libvirt] images_rbd_ceph_conf, else /etc/ceph/ceph.conf.'),
    cfg.StrOpt('rbd_user',
               help='RADOS user (without "client.") Default: [libvirt] rbd_user, '
                    'else "admin".'),
    cfg.StrOpt('rbd_keyring',
               help='Keyring file for rbd_user; default: what ceph.conf says.'),
    cfg.StrOpt('rbd_target_pool',
               help='Pool that instance disks are cloned into. Default: [libvirt] '
                    'images_rbd_pool.'),
    cfg.ListOpt('rbd_allowed_source_pools', default=['images'],
                help='Pools an rbd:// image location may name. A location in any '
                     'other pool (for example another tenant\'s disk in "vms") is '
                     'refused: locations are claims, not facts.'),
    cfg.ListOpt('rbd_allowed_target_pools', default=[],
                help='Pools a clone may be created in; empty means only '
                     'rbd_target_pool.'),
    cfg.IntOpt('rbd_max_clone_depth', default=3, min=1,
               help='Longest parent chain a new clone may have (the clone counts). '
                    'Deep chains slow every read that falls through to a parent.'),
    cfg.BoolOpt('rbd_flatten', default=False,
                help='Flatten every clone (copies all data in the cluster; the disk '
                     'no longer depends on the image).'),
    cfg.ListOpt('rbd_flatten_purposes',
                default=['unshelve', 'cross_cell_move', 'live_migration'],
                help='Request purposes for which a clone is flattened, so that a '
                     'moved or restored disk does not depend on the image.'),
    cfg.IntOpt('rbd_connect_timeout', default=10, min=1,
               help='Seconds to wait for the Ceph monitors when connecting.'),
    cfg.IntOpt('rbd_op_timeout', default=30, min=1,
               help='Seconds after which one RADOS operation is abandoned.'),
    cfg.ListOpt('rbd_source_ceph_confs', default=[],
                help='Further ceph.conf files of clusters that stream_copy may read '
                     'rbd:// locations from (full copy, hash verified). The cluster '
                     'is matched by fsid; rbd_ceph_conf is always included.'),
]

# Nova's own [libvirt] RBD options, registered only when Nova has not (standalone).
nova_libvirt_rbd_opts = [
    cfg.StrOpt('images_rbd_pool', default='rbd'),
    cfg.StrOpt('images_rbd_ceph_conf', default=''),
    cfg.StrOpt('rbd_user'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register our group, and the ``[glance]`` options Nova would have."""
    conf.register_opts(handler_opts + stream_copy_opts + rbd_opts, group=GROUP)
    _register_glance_opts(conf)
    conf.register_group(cfg.OptGroup('libvirt'))
    _register_missing(conf, nova_libvirt_rbd_opts, 'libvirt')


def _register_missing(conf: cfg.ConfigOpts, opts, group: str) -> None:
    """Register only options not already known (Nova registers [glance] itself)."""
    known = set(conf[group].keys()) if group in conf else set()
    for opt in opts:
        if opt.dest not in known:
            conf.register_opt(opt, group=group)


def _register_glance_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(cfg.OptGroup(GLANCE_GROUP))
    _register_missing(conf, [
        cfg.IntOpt('num_retries', default=3, min=0,
                   help='Retries of a failed Glance API call (Nova\'s option).'),
    ], GLANCE_GROUP)
    _register_missing(conf, ks_loading.get_session_conf_options(), GLANCE_GROUP)
    _register_missing(conf, ks_loading.get_auth_common_conf_options(), GLANCE_GROUP)
    _register_missing(conf, ks_loading.get_adapter_conf_options(), GLANCE_GROUP)
    conf.set_default('service_type', 'image', group=GLANCE_GROUP)


def list_opts():
    """oslo-config-generator entry point."""
    return [(GROUP, handler_opts + stream_copy_opts + rbd_opts)]


def handler_order(conf: cfg.ConfigOpts, virt_driver: str | None) -> list[str]:
    """The ordered handler names enabled for ``virt_driver``."""
    group = conf[GROUP]
    override = group.virt_driver_handlers.get(virt_driver or '') if virt_driver else None
    if override is not None:
        return [n.strip() for n in override.split('+') if n.strip()]
    return [n.strip() for n in group.handlers if n.strip()]
