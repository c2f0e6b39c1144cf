"""The project's lab: real OpenStack-side services on loopback, started and stopped
by the project itself (tests, demos, benchmarks). Stdlib only at import time.

    from tools.lab import GlanceService
    glance = GlanceService().start()      # reuses a healthy running one
    client = glance.client(token="lab-admin")
    glance.stop()

CLI: ``python -m tools.lab start glance | stop [all] | status | env``
(services: ceph, xfs, btrfs, ext4, gluster, glance, nginx).
"""

from collections.abc import Callable
from functools import partial

from .ceph import CephService
from .glance import GlanceService
from .gluster import GlusterService
from .libvirt import LibvirtService
from .loopfs import LoopFsService, read_fs_marker, write_fs_marker
from .nginx import NginxService
from .service import LAB_DIR, REPO_ROOT, RUN_DIR, LabService, ServiceError
from .tgt import TgtService

# Every service the CLI knows (name -> factory of its default instance), in start
# order: Ceph before a Glance with an rbd store, file systems before a Glance with file
# stores on them. ``stop all`` also frees unknown dirs under .lab/run (their processes,
# mounts and loop devices).
SERVICES: dict[str, Callable[[], LabService]] = {
    "ceph": CephService,
    "xfs": partial(LoopFsService, "xfs"),
    "btrfs": partial(LoopFsService, "btrfs"),
    "ext4": partial(LoopFsService, "ext4"),
    "gluster": GlusterService,
    "glance": GlanceService,
    "nginx": NginxService,
    "tgt": TgtService,
    "libvirt": LibvirtService,
}

__all__ = ["CephService", "GlanceService", "GlusterService", "LoopFsService", "NginxService",
           "LabService", "ServiceError", "SERVICES", "LAB_DIR", "REPO_ROOT", "RUN_DIR",
           "read_fs_marker", "write_fs_marker"]
