"""The project's lab: real OpenStack-side services on loopback, started and stopped
by the project itself (tests, demos, benchmarks). Stdlib only at import time.

    from tools.lab import GlanceService
    glance = GlanceService().start()      # reuses a healthy running one
    client = glance.client(token="lab-admin")
    glance.stop()

CLI: ``python -m tools.lab start glance | stop [all] | status | env``
(services: ceph, xfs, btrfs, ext4, gluster, keystone, barbican, glance, nginx, tgt,
libvirt, cloud). Keystone and Barbican: ``KeystoneService``, ``BarbicanService(keystone)``;
``GlanceService(keystone=...)`` puts Glance behind that Keystone.
"""

from collections.abc import Callable
from functools import partial

from .barbican import BarbicanService
from .ceph import CephService
from .cloud import CloudService
from .glance import GlanceService
from .gluster import GlusterService
from .keystone import KeystoneService, nova_conf_keystone, nova_conf_keystone_dict
from .libvirt import LibvirtService
from .loopfs import LoopFsService, read_fs_marker, write_fs_marker
from .nginx import NginxService
from .service import LAB_DIR, REPO_ROOT, RUN_DIR, LabService, ServiceError
from .tgt import TgtService

# Every service the CLI knows (name -> factory of its default instance), in start
# order: Ceph before a Glance with an rbd store, file systems before a Glance with file
# stores on them, Keystone before Barbican (behind it) before a Glance behind Keystone.
# ``stop all`` also frees unknown dirs under .lab/run (their processes, mounts and loop
# devices).
SERVICES: dict[str, Callable[[], LabService]] = {
    "ceph": CephService,
    "xfs": partial(LoopFsService, "xfs"),
    "btrfs": partial(LoopFsService, "btrfs"),
    "ext4": partial(LoopFsService, "ext4"),
    "gluster": GlusterService,
    "keystone": KeystoneService,
    "barbican": BarbicanService,
    "glance": GlanceService,
    "nginx": NginxService,
    "tgt": TgtService,
    "libvirt": LibvirtService,
    # The small cloud (Keystone ... nova-compute) of its own cloud-* services.
    "cloud": CloudService,
}

__all__ = ["BarbicanService", "CephService", "CloudService", "GlanceService",
           "GlusterService", "KeystoneService", "LibvirtService", "LoopFsService",
           "NginxService", "TgtService", "nova_conf_keystone", "nova_conf_keystone_dict",
           "LabService", "ServiceError", "SERVICES", "LAB_DIR", "REPO_ROOT", "RUN_DIR",
           "read_fs_marker", "write_fs_marker"]
