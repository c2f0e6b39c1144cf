"""A ceph-mgr for a lab Ceph cluster: Nova's RBD image backend needs pool statistics.

The lab's Ceph (tools/lab/ceph.py) runs without a mgr, which is enough for RBD
I/O. But nova-compute with ``[libvirt] images_type = rbd`` sizes its disk from
``ceph df`` (``RBDDriver.get_pool_info``), and without a mgr the monitors report no
pools at all ("Pool vms could not be found": the compute node is never created).
So the lab cloud adds one mgr (Debian's ceph-mgr, same release) to its cluster:

    mgr = CephMgrService(ceph, name="cloud-ceph-mgr").start()   # ~3 s

Its key (``mgr.<id>``, caps ``allow profile mgr``) is created with the cluster's
admin key into its own dir; the daemon runs in the foreground (``-f``) with its
admin socket, pid and log files in that dir, the CEPH_* environment removed (as
for the mon and OSD). Healthy once ``ceph df`` lists the cluster's pools.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, ClassVar

from .service import LabService, ServiceError

CEPH_MGR = "/usr/bin/ceph-mgr"
CEPH = "/usr/bin/ceph"
MGR_ID = "x"


class CephMgrService(LabService):
    """One ceph-mgr for ``ceph`` (a started CephService)."""

    name: ClassVar[str] = "ceph-mgr"
    start_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 3.0

    def __init__(self, ceph: Any, *, name: str | None = None,
                 run_dir: Path | None = None) -> None:
        super().__init__(run_dir, name=name)
        self.ceph = ceph

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items()
                if k not in ("CEPH_CONF", "CEPH_KEYRING", "CEPH_ARGS")}

    def _ceph(self, *args: str, timeout: float = 30) -> str:
        argv = [CEPH, "-c", str(self.ceph.conf_path), "--id", "admin",
                "--keyring", str(self.ceph.keyring_path), *args]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout, env=self._env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"{self.name}: {' '.join(args)}: {exc}") from exc
        if proc.returncode != 0:
            raise ServiceError(f"{self.name}: ceph {' '.join(args)} failed: "
                               f"{proc.stderr.strip()}")
        return proc.stdout

    def prepare(self) -> None:
        if not Path(CEPH_MGR).exists():
            raise ServiceError(f"{self.name}: {CEPH_MGR} missing: run "
                               "tools/install-deps.sh (ceph-mgr)")
        data = self.workdir / f"mgr.{MGR_ID}"
        data.mkdir()
        self._ceph("auth", "get-or-create", f"mgr.{MGR_ID}", "mon", "allow profile mgr",
                   "osd", "allow *", "mds", "allow *", "-o", str(data / "keyring"))
        self.state.update(mgr_id=MGR_ID, fsid=self.ceph.fsid)
        self.save_state()

    def command(self) -> list[str]:
        w = self.workdir
        # Daemons let CEPH_* override ceph.conf: run it without them (as the mon, OSD).
        return ["/usr/bin/env", "-u", "CEPH_CONF", "-u", "CEPH_KEYRING", "-u", "CEPH_ARGS",
                CEPH_MGR, "-f", "-c", str(self.ceph.conf_path), "-i", MGR_ID,
                "--mgr-data", str(w / f"mgr.{MGR_ID}"),
                "--keyring", str(w / f"mgr.{MGR_ID}" / "keyring"),
                "--admin-socket", str(w / "mgr.asok"), "--pid-file", str(w / "mgr.pid"),
                "--log-file", str(w / "mgr.log")]

    def matches_config(self) -> bool:
        return self.state.get("fsid") == self.ceph.fsid

    def is_healthy(self) -> bool:
        try:
            pools = json.loads(self._ceph("df", "--format", "json", timeout=10))["pools"]
        except (ServiceError, ValueError, KeyError):
            return False
        return {p["name"] for p in pools} >= set(self.ceph.pools)
