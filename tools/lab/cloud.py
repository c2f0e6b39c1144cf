"""A small real cloud on loopback: Keystone, Glance, Placement, Nova (API, conductor,
scheduler, compute with libvirt/TCG), RabbitMQ, Ceph; no Neutron.

devstack cannot run here (see tests/cloud/README.rst: systemd, git clones, root), so
the lab starts the same services the way devstack's lib/ scripts configure them,
every one a real daemon from the project's venvs, each in its own dir under the run
dir (names ``cloud-*``, so a cloud never reuses or stops another lab service):

=====================  ===========================================================
cloud-ceph             1 mon + 1 OSD (memstore); pools ``images`` (Glance's rbd store
                       ``ceph``) and ``vms`` (Nova's ``images_rbd_pool``)
cloud-ceph-mgr         its ceph-mgr (Nova's rbd backend reads pool sizes: ceph df)
cloud-xfs              XFS (reflink) loop mount: Glance's file store ``xfs`` and
                       Nova's ``instances_path`` (the computes' shared mount; marker
                       id ``xfs-images``)
cloud-keystone         Keystone 30; users nova, glance, placement (service + admin)
cloud-rabbitmq         RabbitMQ 3.10 (Debian), private epmd
cloud-glance           Glance 33 behind Keystone: stores ``fs`` (local), ``ceph``
                       (rbd), ``xfs`` (file, on the shared mount), ``web`` (http)
cloud-libvirt          libvirtd + virtlogd (tools/lab/libvirt.py), TCG guests
cloud-neutron-standin  NOT Neutron: the empty port listings Nova reads when it deletes
                       a server (tools/lab/neutron_standin.py says why)
cloud-mariadb          MariaDB (Debian): the nova_api, nova_cell0, nova_cell1 and
                       placement databases (sqlite failed under concurrent writers)
cloud-placement        Placement API (uWSGI)
cloud-nova-api         compute API (uWSGI, nova.wsgi.osapi_compute), cells v2
cloud-nova-conductor   nova-conductor (cells v2: cell0 and cell1)
cloud-nova-scheduler   nova-scheduler
cloud-nova-compute     nova-compute, libvirt driver (virt_type qemu), the PATCHED Nova
                       with the handler chain on ([image_handlers] nova_integration)
=====================  ===========================================================

One compute host; its image backend is switchable (``set_images_type``): ``rbd``
(root disks in pool vms: rbd_clone clones the image's snapshot) or ``qcow2`` (files
under instances_path on the XFS mount: shared_fs makes the instance disk a qcow2
overlay on a pin, a hard link of Glance's file, nothing copied). Switching restarts
nova-compute only (4-15 s, until the new process reported its state); Nova has one
``images_type`` per compute, and a second compute on the same machine would report
the same hypervisor hostname (libvirt's) and clash in Placement.

    cloud = CloudService().start()      # ~70 s on a quiet machine, ~2 min at load 10
    cloud.tempest_conf(path)            # tempest.conf for this cloud
    cloud.set_images_type("qcow2")
    cloud.stop()

CLI: ``python -m tools.lab start cloud`` / ``stop cloud``; tools/cloud.sh.
Stdlib only at import (the REST calls use urllib).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import uuid
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, ClassVar

from .boot_disk import BootDisk
from .ceph import CephService
from .ceph_mgr import CephMgrService
from .glance import GlanceService
from .keystone import DOMAIN, REGION, SERVICE_PROJECT, KeystoneService, password_of
from .libvirt import LibvirtService
from .loopfs import LoopFsService, write_fs_marker
from .mariadb import MariaDBService
from .neutron_standin import NeutronStandinService
from .nova_services import NOVA_VENV, NovaDaemon, UwsgiApp
from .rabbitmq import RabbitMQService
from .service import LOOPBACK, LabService, ServiceError, free_port, tail

HOST = "lab-cloud"              # [DEFAULT] host of every Nova service
FS_ID = "xfs-images"            # the shared mount's identity marker
FLAVOR_ID, FLAVOR_NAME = "lab-tiny", "m1.lab"
PLACEMENT_USER, PLACEMENT_PASSWORD = "placement", "lab-secret-placement"
IMAGES_TYPES = ("rbd", "qcow2")
COMPUTE_API_VERSION = "2.37"    # networks 'none' needs >= 2.37
PART_START_TIMEOUT = 180.0
# The compute's chain per images_type ([image_handlers] images_type_handlers).
COMPUTE_HANDLERS = {"rbd": ("rbd_clone", "stream_copy"),
                    "qcow2": ("shared_fs", "stream_copy")}
# Sparse: only what is written costs. Nova reports it as the host's DISK_GB for qcow2
# disks (the 1 GiB flavor needs >= 1 GiB free); mkfs writes ~70 MiB.
XFS_SIZE_MIB = 4096
DISCOVER_INTERVAL = 2            # [scheduler] discover_hosts_in_cells_interval


def _conf_text(sections: dict[str, dict[str, Any]], header: str) -> str:
    out = [f"# {header}"]
    for group, opts in sections.items():
        out.append(f"\n[{group}]")
        for key, value in opts.items():
            if isinstance(value, bool):
                value = str(value).lower()
            elif isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, dict):
                value = ",".join(f"{k}:{v}" for k, v in value.items())
            out.append(f"{key} = {value}")
    return "\n".join(out) + "\n"


def _password_auth(ks: KeystoneService, user: str, password: str) -> dict[str, str]:
    return {"auth_type": "password", "auth_url": ks.auth_url, "username": user,
            "password": password, "user_domain_name": DOMAIN,
            "project_name": SERVICE_PROJECT, "project_domain_name": DOMAIN}


class CloudService(LabService):
    """The whole cloud as one lab service (no daemon of its own: its parts are)."""

    name: ClassVar[str] = "cloud"
    start_timeout: ClassVar[float] = 900.0  # unused: the parts have their own bounds

    def __init__(self, run_dir: Path | None = None, *, images_type: str = "rbd",
                 name: str | None = None, debug: bool = False) -> None:
        if images_type not in IMAGES_TYPES:
            raise ValueError(f"images_type must be one of {IMAGES_TYPES}")
        super().__init__(run_dir, name=name)
        self.run_dir = self.workdir.parent
        self.images_type, self.debug = images_type, debug
        p = f"{self.name}-"
        rd = self.run_dir
        self.ceph = CephService(name=p + "ceph", run_dir=rd)
        self.ceph_mgr = CephMgrService(self.ceph, name=p + "ceph-mgr", run_dir=rd)
        self.xfs = LoopFsService("xfs", name=p + "xfs", size_mib=XFS_SIZE_MIB, run_dir=rd)
        self.keystone = KeystoneService(name=p + "keystone", run_dir=rd)
        self.rabbit = RabbitMQService(name=p + "rabbitmq", run_dir=rd)
        self.db = MariaDBService(name=p + "mariadb", run_dir=rd)
        self.libvirt = LibvirtService(name=p + "libvirt", run_dir=rd)
        self.neutron = NeutronStandinService(name=p + "neutron-standin", run_dir=rd)
        self.glance = GlanceService(
            name=p + "glance", keystone=self.keystone, ceph=self.ceph, run_dir=rd,
            file_stores={"xfs": (self.xfs.mountpoint / "glance-images",
                                 {"id": FS_ID, "mountpoint": str(self.xfs.mountpoint)})})
        self._nova: dict[str, LabService] = {}
        self._loosen_timeouts([self.ceph, self.ceph_mgr, self.keystone, self.rabbit, self.db,
                               self.libvirt, self.neutron, self.glance])

    @staticmethod
    def _loosen_timeouts(parts: list[LabService]) -> None:
        """Each part's start bound, at least PART_START_TIMEOUT: a cloud starts a dozen
        daemons on 2 cores (often beside other labs), far slower than one alone."""
        for svc in parts:
            svc.start_timeout = max(svc.start_timeout, PART_START_TIMEOUT)  # type: ignore[misc]

    # -- where things are -----------------------------------------------------------
    @property
    def nova_conf_path(self) -> Path:
        return self.workdir / "etc" / "nova" / "nova.conf"

    @property
    def compute_conf_path(self) -> Path:
        return self.workdir / "etc" / "nova" / "nova-compute.conf"

    @property
    def instances_path(self) -> Path:
        return self.xfs.mountpoint / "instances"

    @property
    def compute_api(self) -> str:
        return f"http://{LOOPBACK}:{self.state['ports']['nova-api']}/v2.1"

    @property
    def compute_log(self) -> Path:
        return self.run_dir / f"{self.name}-nova-compute" / "nova-compute.log"

    def parts(self) -> list[LabService]:
        """Every service of the cloud, in start order."""
        self._nova_services()
        return [self.ceph, self.ceph_mgr, self.xfs, self.keystone, self.rabbit, self.db,
                self.libvirt,
                self.neutron, self.glance, *self._nova.values()]

    def _nova_services(self) -> dict[str, LabService]:
        ports = self.state.get("ports") or self._load_state().get("ports")
        if self._nova or not ports:
            return self._nova
        p, rd = f"{self.name}-", self.run_dir
        etc = self.workdir / "etc"
        self._nova = {
            "placement": UwsgiApp(p + "placement", "placement.wsgi.api:application",
                                  {"OS_PLACEMENT_CONFIG_DIR": str(etc / "placement")},
                                  port=ports["placement"], run_dir=rd),
            "nova-api": UwsgiApp(p + "nova-api", "nova.wsgi.osapi_compute:application",
                                 {"OS_NOVA_CONFIG_DIR": str(etc / "nova")},
                                 port=ports["nova-api"], processes=2, run_dir=rd),
            "nova-conductor": NovaDaemon("nova-conductor", [self.nova_conf_path],
                                         self.cell_query, HOST, name=p + "nova-conductor",
                                         run_dir=rd),
            "nova-scheduler": NovaDaemon("nova-scheduler", [self.nova_conf_path],
                                         self.cell_query, HOST, name=p + "nova-scheduler",
                                         run_dir=rd),
            "nova-compute": NovaDaemon("nova-compute",
                                       [self.nova_conf_path, self.compute_conf_path],
                                       self.cell_query, HOST, name=p + "nova-compute",
                                       run_dir=rd),
        }
        self._loosen_timeouts(list(self._nova.values()))
        return self._nova

    # -- LabService hooks -------------------------------------------------------------
    def command(self) -> None:
        return None

    def is_running(self) -> bool:
        return self.state_file.exists() and bool(self._load_state().get("ready"))

    def is_healthy(self) -> bool:
        self.state = self._load_state() or self.state
        return bool(self.state.get("ready")) and all(
            s.is_running() and s.is_healthy() for s in self.parts())

    def matches_config(self) -> bool:
        return self.state.get("images_type") == self.images_type

    def prepare(self) -> None:
        timings: dict[str, float] = {}
        self.state["timings"] = timings

        def timed(what: str, fn: Callable[[], Any]) -> Any:
            t0 = time.monotonic()
            try:
                return fn()
            finally:
                timings[what] = round(time.monotonic() - t0, 2)

        # 1. the independent services at once (the XFS mount before libvirtd: its
        #    private mount namespace only sees mounts made before it starts).
        def fs_then_libvirt() -> None:
            timed("xfs", self.xfs.start)
            write_fs_marker(self.xfs.mountpoint, FS_ID)
            (self.xfs.mountpoint / "glance-images").mkdir(exist_ok=True)
            self.instances_path.mkdir(exist_ok=True)
            timed("libvirt", self.libvirt.start)

        with ThreadPoolExecutor(7) as pool:
            def ceph_then_mgr() -> None:
                timed("ceph", self.ceph.start)
                timed("ceph-mgr", self.ceph_mgr.start)

            futures = [pool.submit(ceph_then_mgr),
                       pool.submit(timed, "keystone", self.keystone.start),
                       pool.submit(timed, "rabbitmq", self.rabbit.start),
                       pool.submit(timed, "mariadb", self.db.start),
                       pool.submit(timed, "neutron-standin", self.neutron.start),
                       pool.submit(fs_then_libvirt),
                       pool.submit(timed, "boot-disk", BootDisk().build)]
            for f in futures:
                f.result()
        # 2. Glance (needs Ceph, Keystone, the mount), accounts, configs, databases.
        self.state["ports"] = {"placement": free_port(), "nova-api": free_port()}
        self.save_state()
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(timed, "glance", self.glance.start),
                       pool.submit(timed, "keystone-accounts", self._register),
                       pool.submit(timed, "configs+databases", self._configure)]
            for f in futures:
                f.result()
        # 3. the Nova services, then the compute host into cell1, then a flavor.
        nova = self._nova_services()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(timed, n, nova[n].start)
                       for n in ("placement", "nova-api", "nova-conductor",
                                 "nova-scheduler")]
            for f in futures:
                f.result()
        self.save_state()
        timed("nova-compute", nova["nova-compute"].start)
        timed("host-mapped", self._wait_host_mapped)
        timed("flavor", self._ensure_flavor)
        self.state.update(ready=True, images_type=self.images_type,
                          endpoint=self.compute_api)
        self.save_state()

    def release(self) -> None:
        """Stop every part, in tiers (each tier at once): Nova's services, then the
        services they use, then Ceph and the mount (libvirtd must be gone first)."""
        parts = self.parts()
        nova = list(self._nova.values())
        last = [self.ceph, self.xfs]
        tiers = [nova, [s for s in parts if s not in nova and s not in last], last]
        problems: list[str] = []

        def stop(svc: LabService) -> None:
            self._keep_logs(svc)
            try:
                svc.stop()
            except ServiceError as exc:
                problems.append(str(exc))

        for tier in tiers:
            with ThreadPoolExecutor(max(1, len(tier))) as pool:
                list(pool.map(stop, tier))
        super().release()
        if problems:
            raise ServiceError("; ".join(problems))

    def _keep_logs(self, svc: LabService) -> None:
        """On a failed start (the cloud dir stays for inspection), keep each part's
        logs in <cloud>/logs/<part>/: stopping a part removes its dir."""
        if self.state.get("ready") or not self.workdir.is_dir():
            return
        self.copy_logs(self.workdir / "logs", [svc])

    def copy_logs(self, dest: Path, parts: list[LabService] | None = None) -> Path:
        """Copy every part's logs (its dir's *.log, Nova's own log) to dest/<part>/,
        e.g. before a test's teardown stops the cloud; returns dest."""
        for svc in parts if parts is not None else [self, *self.parts()]:
            if not svc.workdir.is_dir():
                continue
            for log in svc.workdir.glob("*.log"):
                (Path(dest) / svc.name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, Path(dest) / svc.name / log.name)
        return Path(dest)

    # -- Keystone ---------------------------------------------------------------------
    def _register(self) -> None:
        """The placement service user and the placement and compute endpoints."""
        ks = self.keystone
        domain = ks._admin("GET", "/v3/domains?name=Default")["domains"][0]["id"]
        users = ks._by_name("users", f"?domain_id={domain}")
        roles = ks._by_name("roles")
        project = ks.project_id(SERVICE_PROJECT)
        if PLACEMENT_USER not in users:
            users[PLACEMENT_USER] = ks._admin("POST", "/v3/users", {"user": {
                "name": PLACEMENT_USER, "domain_id": domain, "enabled": True,
                "password": PLACEMENT_PASSWORD, "default_project_id": project}})["user"]["id"]
        for role in ("service", "admin"):
            ks._admin("PUT", f"/v3/projects/{project}/users/{users[PLACEMENT_USER]}"
                             f"/roles/{roles[role]}")
        ports = self.state["ports"]
        ks.register_endpoint("placement", "placement", f"http://{LOOPBACK}:{ports['placement']}")
        ks.register_endpoint("compute", "nova", f"http://{LOOPBACK}:{ports['nova-api']}/v2.1")

    # -- configuration ----------------------------------------------------------------
    def _nova_sections(self) -> dict[str, dict[str, Any]]:
        ks, w = self.keystone, self.workdir
        nova = _password_auth(ks, "nova", password_of("nova"))
        placement = _password_auth(ks, PLACEMENT_USER, PLACEMENT_PASSWORD)
        return {
            "DEFAULT": {
                "debug": self.debug, "host": HOST, "my_ip": LOOPBACK,
                "state_path": w / "state", "transport_url": self.rabbit.transport_url,
                "instances_path": self.instances_path,
                "compute_driver": "libvirt.LibvirtDriver",
                "osapi_compute_workers": 1, "metadata_workers": 1,
                "shutdown_timeout": 5, "force_config_drive": False,
                "instance_usage_audit": False, "heal_instance_info_cache_interval": -1,
                "use_stderr": False,
                # The chain's verdicts (INFO) in nova-compute's log, and no noise.
                "default_log_levels": "amqp=WARN,amqplib=WARN,oslo_messaging=INFO,"
                                      "sqlalchemy=WARN,urllib3=WARN,keystonemiddleware=WARN,"
                                      "routes.middleware=WARN,stevedore=WARN,"
                                      "image_handlers=DEBUG,glanceclient=WARN",
            },
            "api": {"auth_strategy": "keystone"},
            "api_database": {"connection": self.db.url("nova_api")},
            "database": {"connection": self.db.url("nova_cell1")},
            "keystone_authtoken": {**nova, "www_authenticate_uri": ks.auth_url,
                                   "interface": "public"},
            "service_user": {"send_service_user_token": True, **nova},
            "glance": {**nova, "region_name": REGION, "valid_interfaces": "public"},
            "placement": {**placement, "region_name": REGION,
                          "valid_interfaces": "public"},
            "neutron": {**nova, "region_name": REGION,
                        "endpoint_override": self.neutron.endpoint},
            # The scheduler maps new compute hosts into their cell itself (what
            # 'nova-manage cell_v2 discover_hosts' does, ~10 s of nova-manage here).
            "scheduler": {"discover_hosts_in_cells_interval": DISCOVER_INTERVAL},
            "vnc": {"enabled": False}, "spice": {"enabled": False},
            "serial_console": {"enabled": False},
            "oslo_concurrency": {"lock_path": w / "locks"},
            "oslo_messaging_notifications": {"driver": "noop"},
            "nova_sys_admin": {"helper_command": NOVA_VENV / "bin" / "privsep-helper"},
            "os_brick": {"lock_path": w / "locks"},
            "wsgi": {"api_paste_config": w / "etc" / "nova" / "api-paste.ini"},
        }

    def _compute_sections(self) -> dict[str, dict[str, Any]]:
        ceph_key = self.state["ceph_secret_uuid"]
        return {
            "libvirt": {
                "virt_type": "qemu", "cpu_mode": "none",
                "connection_uri": self.libvirt.uri,
                "images_type": self.images_type, "images_rbd_pool": "vms",
                "images_rbd_ceph_conf": self.ceph.conf_path, "rbd_user": "admin",
                "rbd_secret_uuid": ceph_key, "inject_partition": -2,
                "live_migration_scheme": "tcp",
            },
            "image_handlers": {
                "nova_integration": True, "host": HOST,
                "state_dir": self.workdir / "image-handlers-state",
                "images_type_handlers": ",".join(
                    f"{t}:{'+'.join(h)}" for t, h in COMPUTE_HANDLERS.items()),
                "shared_fs_mounts": {FS_ID: self.xfs.mountpoint},
            },
        }

    def write_compute_conf(self) -> None:
        self.compute_conf_path.write_text(_conf_text(
            self._compute_sections(), f"Written by tools/lab/cloud.py: the compute host "
                                      f"(images_type {self.images_type})."))

    def _configure(self) -> None:
        """nova.conf, nova-compute.conf, placement.conf, the databases, cells v2."""
        w = self.workdir
        for sub in ("etc/nova", "etc/placement", "state", "locks",
                    "image-handlers-state"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(NOVA_VENV / "etc" / "nova" / "api-paste.ini",
                        w / "etc" / "nova" / "api-paste.ini")
        self.nova_conf_path.write_text(_conf_text(
            self._nova_sections(), "Written by tools/lab/cloud.py: the lab cloud's Nova."))
        # The compute host's libvirt secret for cephx (Nova's RBD disks name it).
        key = re.search(r"key\s*=\s*(\S+)", self.ceph.keyring_path.read_text()).group(1)
        self.state["ceph_secret_uuid"] = self._ceph_secret(key)
        self.write_compute_conf()
        ks = self.keystone
        (w / "etc" / "placement" / "placement.conf").write_text(_conf_text({
            "DEFAULT": {"debug": self.debug},
            "api": {"auth_strategy": "keystone"},
            "placement_database": {"connection": self.db.url("placement")},
            "keystone_authtoken": {**_password_auth(ks, PLACEMENT_USER, PLACEMENT_PASSWORD),
                                   "www_authenticate_uri": ks.auth_url,
                                   "interface": "public"},
        }, "Written by tools/lab/cloud.py: the lab cloud's Placement."))
        self._databases()
        self.save_state()

    def _ceph_secret(self, key: str) -> str:
        """A private libvirt secret of usage ceph holding client.admin's key (virsh:
        this module must not need libvirt-python); its UUID goes to rbd_secret_uuid."""
        secret_uuid = str(uuid.uuid4())
        xml = self.workdir / "ceph-secret.xml"
        xml.write_text(f"<secret ephemeral='no' private='yes'><uuid>{secret_uuid}</uuid>"
                       "<usage type='ceph'><name>client.admin lab cloud</name></usage>"
                       "</secret>")
        virsh = ["virsh", "-q", "-c", self.libvirt.uri]
        self._run([*virsh, "secret-define", xml], "virsh secret-define")
        value = self.workdir / "ceph-secret.b64"
        value.touch(0o600)
        value.write_text(base64.b64encode(base64.b64decode(key)).decode())  # checked
        self._run([*virsh, "secret-set-value", secret_uuid, "--file", value],
                  "virsh secret-set-value")
        value.unlink()
        return secret_uuid

    def _databases(self) -> None:
        """placement-manage db sync beside nova-manage api_db sync, cell_v2
        map_cell0 and create_cell, db sync (cell0 and cell1) -- as devstack does,
        on the cloud's MariaDB."""
        self.db.create_databases("nova_api", "nova_cell0", "nova_cell1", "placement")
        with ThreadPoolExecutor(2) as pool:
            placement = pool.submit(
                self._run, [NOVA_VENV / "bin" / "placement-manage", "--config-dir",
                            self.workdir / "etc" / "placement", "db", "sync"],
                "placement db sync")
            self._manage("api_db", "sync")
            self._cells()
            self._manage("db", "sync")
            placement.result()

    def cell_query(self, select: str, database: str = "nova_cell1") -> list[list[str]]:
        """Rows of one SELECT on a cloud database (the MariaDB client, batch mode)."""
        out = self.db.sql_rows(select, database)
        return out

    def _cells(self) -> None:
        """cell0 and cell1 mapped at once (two nova-manage runs)."""
        with ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(self._manage, "cell_v2", "map_cell0", "--database_connection",
                            self.db.url("nova_cell0")),
                pool.submit(self._manage, "cell_v2", "create_cell", "--name", "cell1",
                            "--database_connection", self.db.url("nova_cell1"),
                            "--transport-url", self.rabbit.transport_url)]
            for f in futures:
                f.result()

    def _wait_host_mapped(self, timeout: float = PART_START_TIMEOUT) -> None:
        """Until the scheduler's periodic discovery mapped the compute host into
        cell1 (host_mappings in the API database); boots before that find no host."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.cell_query(f"SELECT id FROM host_mappings WHERE host = '{HOST}'",
                                   "nova_api"):
                    return
            except ServiceError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name}: compute host {HOST} not mapped to a "
                                   f"cell after {timeout:.0f} s (nova-scheduler's "
                                   f"discover_hosts_in_cells_interval)")
            time.sleep(0.2)

    def _manage(self, *args: str) -> str:
        return self._run([NOVA_VENV / "bin" / "nova-manage", "--config-file",
                          self.nova_conf_path, *args], "nova-manage " + " ".join(args[:2]))

    def _run(self, argv: list[Any], what: str) -> str:
        argv = [str(a) for a in argv]
        with open(self.log_file, "ab") as log:
            log.write(f"+ {' '.join(argv)}\n".encode())
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=300, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        with open(self.log_file, "ab") as log:
            log.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise ServiceError(f"{self.name}: {what} failed ({proc.returncode}); log "
                               f"{self.log_file}:\n{tail(self.log_file)}")
        return proc.stdout.decode("utf-8", "replace")

    # -- compute API --------------------------------------------------------------------
    def admin_token(self) -> str:
        return self.keystone.password_token("admin", "admin")[0]

    def compute_request(self, method: str, path: str, body: Any = None, *,
                        token: str | None = None, ok: tuple[int, ...] = (200, 201, 202, 204),
                        version: str = COMPUTE_API_VERSION) -> Any:
        """One compute API call (stdlib), as admin unless token says otherwise."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.compute_api + path, data=data, method=method)
        req.add_header("X-Auth-Token", token or self.admin_token())
        req.add_header("OpenStack-API-Version", f"compute {version}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=60) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        if status not in ok:
            raise ServiceError(f"compute API {method} {path}: {status} {raw[:500]!r}")
        return json.loads(raw) if raw else None

    def _ensure_flavor(self) -> None:
        try:
            self.compute_request("GET", f"/flavors/{FLAVOR_ID}")
        except ServiceError:
            self.compute_request("POST", "/flavors", {"flavor": {
                "name": FLAVOR_NAME, "id": FLAVOR_ID, "ram": 256, "vcpus": 1,
                "disk": 1}})
        self.state["flavor_id"] = FLAVOR_ID

    # -- switching the compute host's image backend -----------------------------------
    def set_images_type(self, images_type: str) -> None:
        """Restart nova-compute with [libvirt] images_type = images_type."""
        if images_type not in IMAGES_TYPES:
            raise ValueError(f"images_type must be one of {IMAGES_TYPES}")
        self.state = self._load_state()
        if self.state.get("images_type") == images_type:
            return
        compute = self._nova_services()["nova-compute"]
        compute.stop()
        self.images_type = images_type
        self.write_compute_conf()
        t0 = time.monotonic()
        compute.start()
        self.state["images_type"] = images_type
        self.state.setdefault("timings", {})[f"compute-restart-{images_type}"] = round(
            time.monotonic() - t0, 2)
        self.save_state()

    # -- tempest ------------------------------------------------------------------------
    def tempest_conf(self, path: Path, *, boot_image: Path | None = None) -> Path:
        """tempest.conf for this cloud, the [image_handlers] group as agreed with the
        plugin (doc: tests/cloud/README.rst). The scenario for the current
        images_type gets its store; the other store is '' (skipped)."""
        self.state = self._load_state()
        image = boot_image or BootDisk().build().path
        ks = self.keystone
        rbd = self.state.get("images_type") == "rbd"
        sections = {
            "DEFAULT": {"log_file": Path(path).parent / "tempest.log"},
            "auth": {"admin_username": "admin", "admin_password": password_of("admin"),
                     "admin_project_name": "admin", "admin_domain_name": DOMAIN,
                     "use_dynamic_credentials": True,
                     "create_isolated_networks": False},
            "identity": {"uri_v3": ks.auth_url, "auth_version": "v3",
                         "region": REGION, "v3_endpoint_type": "public",
                         "disable_ssl_certificate_validation": True},
            "identity-feature-enabled": {"api_v2": False, "api_v3": True},
            "service_available": {"nova": True, "glance": True, "neutron": False,
                                  "cinder": False, "swift": False, "placement": True,
                                  "horizon": False},
            "compute": {"flavor_ref": FLAVOR_ID, "flavor_ref_alt": FLAVOR_ID,
                        "region": REGION, "endpoint_type": "publicURL",
                        "build_timeout": 300, "fixed_network_name": "",
                        "min_compute_nodes": 1, "min_microversion": COMPUTE_API_VERSION,
                        "max_microversion": "latest"},
            "compute-feature-enabled": {"console_output": True,
                                        "disk_config": False},
            "image": {"region": REGION, "endpoint_type": "publicURL",
                      "build_timeout": 120},
            "image-feature-enabled": {"import_image": True},
            "validation": {"run_validation": False, "connect_method": "fixed"},
            "image_handlers": {
                # What the compute's chain runs for its images_type (COMPUTE_HANDLERS).
                "enabled_handlers": COMPUTE_HANDLERS[self.state.get("images_type", "rbd")],
                "rbd_store": "ceph" if rbd else "",
                "shared_fs_store": "" if rbd else "xfs",
                # Glance's local store: off the shared mount, not in Ceph.
                "fallback_store": "fs",
                "ceph_conf": self.ceph.conf_path, "ceph_user": "admin",
                "ceph_keyring": self.ceph.keyring_path,
                "rbd_instances_pool": "vms",
                "instances_path": self.instances_path,
                "compute_log_file": self.compute_log,
                "raw_image_file": image, "boot_timeout": 300,
            },
        }
        path = Path(path)
        path.write_text(_conf_text(sections, "Written by tools/lab/cloud.py for the lab "
                                             f"cloud (images_type {self.state.get('images_type')})."))
        return path

    def status(self) -> dict[str, Any]:
        return {**super().status(), "parts": [s.name for s in self.parts()]}
