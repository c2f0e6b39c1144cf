"""Options of the Ceph cluster(s) this host reads, shared by rbd_clone and stream_copy.

Both handlers list them, so either installed alone documents and registers them.
Nova's own ``[libvirt]`` RBD options are the defaults and are registered here only
when Nova has not (the command runs without Nova).
"""
from __future__ import annotations

from oslo_config import cfg

from image_handlers.conf import GROUP, register_missing

cluster_opts = (
    cfg.StrOpt('rbd_ceph_conf',
               help='ceph.conf of the cluster that holds instance disks. Default: '
                    '[libvirt] images_rbd_ceph_conf, else /etc/ceph/ceph.conf.'),
    cfg.StrOpt('rbd_user',
               help='RADOS user (without "client.") Default: [libvirt] rbd_user, '
                    'else "admin".'),
    cfg.StrOpt('rbd_keyring',
               help='Keyring file for rbd_user; default: what ceph.conf says.'),
    cfg.ListOpt('rbd_allowed_source_pools', default=['images'],
                help='Pools an rbd:// image location may name. A location in any '
                     'other pool (for example another tenant\'s disk in "vms") is '
                     'refused: locations are claims, not facts.'),
    cfg.IntOpt('rbd_connect_timeout', default=10, min=1,
               help='Seconds to wait for the Ceph monitors when connecting.'),
    cfg.IntOpt('rbd_op_timeout', default=30, min=1,
               help='Seconds after which one RADOS operation is abandoned.'),
)

# Nova's own [libvirt] RBD options, registered only when Nova has not (standalone).
nova_libvirt_rbd_opts = (
    cfg.StrOpt('images_rbd_pool', default='rbd'),
    cfg.StrOpt('images_rbd_ceph_conf', default=''),
    cfg.StrOpt('rbd_user'),
)


def register(conf: cfg.ConfigOpts, opts) -> None:
    """Register ``opts`` (the handler's, cluster ones included) and Nova's
    [libvirt] RBD options where missing."""
    conf.register_opts(list(opts), group=GROUP)
    conf.register_group(cfg.OptGroup('libvirt'))
    register_missing(conf, nova_libvirt_rbd_opts, 'libvirt')
