"""The project's lab: real OpenStack-side services on loopback, started and stopped
by the project itself (tests, demos, benchmarks). Stdlib only at import time.

    from tools.lab import GlanceService
    glance = GlanceService().start()      # reuses a healthy running one
    client = glance.client(token="lab-admin")
    glance.stop()

CLI: ``python -m tools.lab start glance | stop [all] | status | env``.
"""

from .ceph import CephService
from .glance import GlanceService
from .nginx import NginxService
from .service import LAB_DIR, REPO_ROOT, RUN_DIR, LabService, ServiceError

# Every service the CLI knows, in start order (Ceph before a Glance with an rbd store;
# tgt, XFS... go here). ``stop all`` also kills unknown dirs under .lab/run.
SERVICES: dict[str, type[LabService]] = {
    "ceph": CephService, "glance": GlanceService, "nginx": NginxService}

__all__ = ["CephService", "GlanceService", "NginxService", "LabService", "ServiceError", "SERVICES",
           "LAB_DIR", "REPO_ROOT", "RUN_DIR"]
