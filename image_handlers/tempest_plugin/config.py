"""The ``[image_handlers]`` group of tempest.conf: what the cloud under test has.

The scenarios read from here which handlers the computes run and which Glance
stores they can serve zero-copy, and where the storage side can be looked at
(the computes' Ceph cluster, Nova's instances path, nova-compute's log). A
scenario whose store is not configured here is skipped, with the option to set
named in the reason. Options agreed with the lab cloud in
/work/briefs/tempest-interface.md; devstack's test-config phase writes them.
"""
from __future__ import annotations

from oslo_config import cfg

group = cfg.OptGroup(name='image_handlers',
                     title='Zero-copy image handlers (image_handlers)')

opts = [
    cfg.ListOpt('enabled_handlers', default=[],
                help='Handlers configured on the computes, in their order '
                     '([image_handlers] handlers of nova.conf), e.g. '
                     'rbd_clone,shared_fs,stream_copy.'),
    cfg.StrOpt('rbd_store', default='',
               help='Glance store id backed by the computes\' Ceph cluster; '
                    'empty skips the RBD scenario.'),
    cfg.StrOpt('shared_fs_store', default='',
               help='Glance file store id whose directory is on the computes\' '
                    'shared mount; empty skips the shared file system scenario.'),
    cfg.StrOpt('fallback_store', default='',
               help='Glance store id no zero-copy handler of the computes can '
                    'serve (a file store off the shared mount, ...), for the '
                    'scenario that checks the logged reasons; empty: Glance\'s '
                    'default store, when it is neither rbd_store nor '
                    'shared_fs_store.'),
    cfg.StrOpt('ceph_conf', default='/etc/ceph/ceph.conf',
               help='ceph.conf of the computes\' cluster, read by the storage-side '
                    'checks.'),
    cfg.StrOpt('ceph_user', default='admin',
               help='Ceph user (without "client.") of the storage-side checks.'),
    cfg.StrOpt('ceph_keyring', default='',
               help='Keyring of ceph_user; empty: the one ceph.conf names.'),
    cfg.StrOpt('rbd_instances_pool', default='vms',
               help='Nova\'s [libvirt] images_rbd_pool.'),
    cfg.StrOpt('instances_path', default='/var/lib/nova/instances',
               help='Nova\'s instances_path on the compute (the scenarios run on '
                    'the compute host: single-node clouds).'),
    cfg.StrOpt('compute_log_file', default='',
               help='nova-compute\'s log file, where the handler chain logs each '
                    'handler\'s reason; empty skips the reason scenario.'),
    cfg.StrOpt('raw_image_file', default='',
               help='A small bootable RAW image the scenarios upload; empty skips '
                    'every scenario.'),
    cfg.IntOpt('boot_timeout', default=300, min=1,
               help='Seconds a server may take to become ACTIVE.'),
]


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(group, opts)]
