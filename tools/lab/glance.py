"""The lab's real Glance 33 API (PyPI) under uWSGI on loopback, without Keystone.

Glance runs from its own venv (``.lab/venv-glance``, built by tools/install-deps.sh)
exactly as deployed: ``glance.wsgi.api:application`` under uWSGI, a sqlite DB synced by
``glance-manage``, multi-store config (fs + read-only http; optionally rbd on the lab
Ceph and more file stores, e.g. on the lab's XFS/btrfs/ext4/Gluster mounts). By default
only Keystone is replaced, by tools/lab/glance_labauth.py in the paste pipeline; clients
still use keystoneauth's ``admin_token`` plugin, like Nova with ``[glance] auth_type =
admin_token``. With ``keystone=<started KeystoneService>`` the pipeline has
keystonemiddleware's real ``auth_token`` there instead (``[keystone_authtoken]``: the
glance service user's password auth, no memcached), and Glance registers itself as
``image`` in Keystone's catalog.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from .service import (LAB_DIR, LOOPBACK, LabService, ServiceError, free_port, http_ok,
                      port_open, state_port)

GLANCE_VENV = LAB_DIR / "venv-glance"
LAB_PKG_DIR = Path(__file__).resolve().parent
CHUNKED_INPUT_LIMIT = 100 * 1024 * 1024  # glanceclient sends 1 MiB chunks; uWSGI default is 1 MiB
# Config sections/stores of ours that a file store's name must not collide with.
RESERVED_STORE_NAMES = frozenset({"fs", "web", "ceph", "DEFAULT", "database", "glance_store",
                                  "os_glance_staging_store", "os_glance_tasks_store",
                                  "import_filtering_opts", "oslo_concurrency", "paste_deploy"})

# Our pipeline: Glance's own versionnegotiation/context/rootapp with the lab token
# filter where keystone's authtoken would be. oslo.middleware's healthcheck can only be
# an app now (as a filter it raises NotImplementedError), so it is mounted beside the
# API like glance's shipped composites do: effectively
# "healthcheck versionnegotiation labauth context rootapp".
LAB_PASTE_SECTIONS = """
[composite:glance-api-lab]
paste.composite_factory = glance.api:root_app_factory
/: api-lab
/healthcheck: healthcheck-lab

[pipeline:api-lab]
pipeline = versionnegotiation {auth_filter} context rootapp

[app:healthcheck-lab]
paste.app_factory = oslo_middleware:Healthcheck.app_factory
backends = disable_by_file
disable_by_file_path = {workdir}/healthcheck_disable

[filter:labauth]
paste.filter_factory = glance_labauth:filter_factory
"""

# Behind the lab's Keystone: keystonemiddleware where labauth is (its options come
# from glance-api.conf's [keystone_authtoken]). delay_auth_decision as in Glance's
# shipped filter: a request without a token reaches Glance, which answers it.
KEYSTONE_PASTE_SECTION = """
[filter:authtoken-lab]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
delay_auth_decision = true
"""

# Used only if the venv lacks glance's shipped etc/glance/glance-api-paste.ini.
FALLBACK_PASTE = """
[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory
"""


class GlanceService(LabService):
    """Glance API on 127.0.0.1:<port>; ``endpoint``, ``client(token)``, ``stop()``."""

    name: ClassVar[str] = "glance"
    start_timeout: ClassVar[float] = 30.0
    # stop() deletes all of Glance's data anyway, so a graceful drain buys nothing; a
    # worker still loading the app ignores SIGTERM until uWSGI's 5 s mercy: SIGKILL at 2 s.
    stop_timeout: ClassVar[float] = 2.0

    def __init__(self, port: int | None = None, *, venv: Path | None = None,
                 processes: int = 2, threads: int = 4, debug: bool = False,
                 fs_metadata: dict[str, str] | None = None,
                 ceph: Any = None,
                 file_stores: Mapping[str, tuple[Path | str, Mapping[str, str]]] | None = None,
                 keystone: Any = None,
                 rbd_stores: Mapping[str, tuple[Any, str]] | None = None,
                 catalog: bool = True,
                 name: str | None = None,
                 run_dir: Path | None = None) -> None:
        """port: fixed port (else $IH_LAB_GLANCE_PORT for the default instance, else
        a free one).
        fs_metadata: optional ``{"id":..., "mountpoint":...}`` for the fs store's
        location metadata (glance_store ``filesystem_store_metadata_file``).
        ceph: a started CephService: adds the rbd store "ceph" (pool images), so an
        upload with backend="ceph" gets an rbd://FSID/images/ID/snap location.
        file_stores: more file stores, ``{store: (datadir, {"id":..., "mountpoint":...})}``
        with datadir under mountpoint (e.g. on a LoopFsService mount): an upload with
        backend=store lands in ``file://<datadir>/<image_id>`` with location metadata
        ``{id, mountpoint, store}``.
        keystone: a started KeystoneService: keystonemiddleware's auth_token (as the
        glance service user) instead of the lab tokens; registers ``image`` in the
        catalog. Clients: ``keystone_client(user, project)``.
        rbd_stores: more rbd stores, ``{store: (started CephService, pool)}`` (e.g. on
        a second lab cluster): an upload or copy-image to store lands in
        ``rbd://<that fsid>/<pool>/<id>/snap``.
        catalog: False keeps a Glance behind Keystone out of the catalog (clients then
        need its endpoint), so it can run beside the one registered as ``image``.
        name: instance name (work dir), for a Glance beside the default "glance"."""
        super().__init__(run_dir, name=name)
        self.venv = Path(venv or GLANCE_VENV)
        env_port = os.environ.get("IH_LAB_GLANCE_PORT") if self.name == "glance" else None
        self.requested_port = port or (int(env_port) if env_port else None)
        self.processes, self.threads, self.debug = processes, threads, debug
        self.fs_metadata = fs_metadata
        self.ceph = ceph
        self.file_stores = _check_file_stores(file_stores or {})
        self.keystone = keystone
        self.rbd_stores = _check_rbd_stores(rbd_stores or {}, self.file_stores)
        self.catalog = catalog

    # -- where things are -------------------------------------------------------
    port = property(state_port)

    @property
    def endpoint(self) -> str:
        """Image API endpoint, e.g. http://127.0.0.1:PORT (no version suffix)."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def images_dir(self) -> Path:
        """The fs store's datadir: file:// locations point in here."""
        return self.workdir / "images"

    def _bin(self, name: str) -> str:
        path = self.venv / "bin" / name
        if not path.exists():
            raise ServiceError(f"glance: {path} missing; run tools/install-deps.sh")
        return str(path)

    # -- LabService hooks ---------------------------------------------------------
    def prepare(self) -> None:
        self.state["port"] = self.requested_port or free_port()
        if port_open(LOOPBACK, self.port):  # else the health probe could ask a stranger
            raise ServiceError(f"glance: port {LOOPBACK}:{self.port} is already in use")
        self.state["endpoint"] = self.endpoint
        for sub in ("images", "staging", "tasks", "locks", "pylib"):
            (self.workdir / sub).mkdir()
        # Only the filter goes on Glance's path: tools/lab itself would shadow the
        # ``glance`` package with our glance.py.
        (self.workdir / "pylib" / "glance_labauth.py").symlink_to(
            LAB_PKG_DIR / "glance_labauth.py")
        (self.workdir / "glance-api.conf").write_text(self._api_conf())
        (self.workdir / "glance-api-paste.ini").write_text(self._paste_ini())
        (self.workdir / "uwsgi.ini").write_text(self._uwsgi_ini())
        if self.fs_metadata is not None:
            (self.workdir / "fs-metadata.json").write_text(json.dumps(self.fs_metadata))
        for store, conf in self.file_stores.items():
            (self.workdir / f"store-{store}-metadata.json").write_text(
                json.dumps(conf["metadata"]))
        self.state["file_stores"] = self.file_stores
        self._db_sync()
        self.save_state()

    def command(self) -> list[str]:
        return [self._bin("uwsgi"), "--ini", str(self.workdir / "uwsgi.ini")]

    def environment(self) -> dict[str, str]:
        return {"OS_GLANCE_CONFIG_DIR": str(self.workdir),
                "PYTHONPATH": str(self.workdir / "pylib"), "PYTHONDONTWRITEBYTECODE": "1"}

    def matches_config(self) -> bool:
        """Same rbd cluster and file stores, and every file store's datadir still there
        (a mount re-created under a running Glance would leave it writing nowhere)."""
        return (self.state.get("ceph_fsid") == (self.ceph.fsid if self.ceph else None)
                and self.state.get("keystone_auth_url")
                == (self.keystone.auth_url if self.keystone else None)
                and (self.state.get("file_stores") or {}) == self.file_stores
                and (self.state.get("rbd_stores") or {}) == self._rbd_store_state()
                and all(Path(c["datadir"]).is_dir() for c in self.file_stores.values()))

    def is_healthy(self) -> bool:
        return "port" in self.state and http_ok(self.endpoint + "/healthcheck")

    def start(self) -> "GlanceService":
        """Start (or reuse) Glance; behind Keystone, (re)register it as ``image``."""
        super().start()
        if self.keystone is not None and self.catalog:
            self.keystone.register_endpoint("image", "glance", self.endpoint)
        return self

    def _rbd_store_state(self) -> dict[str, list[str]]:
        return {store: [ceph.fsid, pool] for store, (ceph, pool) in self.rbd_stores.items()}

    # -- config files ---------------------------------------------------------------
    def _api_conf(self) -> str:
        w = self.workdir
        meta = f"filesystem_store_metadata_file = {w}/fs-metadata.json\n" \
            if self.fs_metadata is not None else ""
        rbd_backend, rbd_section = "", ""
        if self.ceph is not None:
            # Ceph must be running first: Glance silently disables an unreachable store.
            rbd_backend = ", ceph:rbd"
            rbd_section = (f"[ceph]\nrbd_store_pool = images\nrbd_store_user = admin\n"
                           f"rbd_store_ceph_conf = {self.ceph.conf_path}\n"
                           f"rbd_store_chunk_size = 8\nrados_connect_timeout = 10\n\n")
            self.state["ceph_fsid"] = self.ceph.fsid
        file_backends = "".join(f", {store}:file" for store in self.file_stores)
        file_backends += "".join(f", {store}:rbd" for store in self.rbd_stores)
        for store, (ceph, pool) in self.rbd_stores.items():
            rbd_section += (f"[{store}]\nrbd_store_pool = {pool}\nrbd_store_user = admin\n"
                            f"rbd_store_ceph_conf = {ceph.conf_path}\n"
                            f"rbd_store_chunk_size = 8\nrados_connect_timeout = 10\n\n")
        if self.rbd_stores:
            self.state["rbd_stores"] = self._rbd_store_state()
        auth_section = ""
        if self.keystone is not None:
            from .keystone import DOMAIN, SERVICE_PROJECT, password_of
            ks = self.keystone
            self.state["keystone_auth_url"] = ks.auth_url
            auth_section = (
                f"[keystone_authtoken]\nauth_type = password\nauth_url = {ks.auth_url}\n"
                f"www_authenticate_uri = {ks.auth_url}\nusername = glance\n"
                f"password = {password_of('glance')}\nuser_domain_name = {DOMAIN}\n"
                f"project_name = {SERVICE_PROJECT}\nproject_domain_name = {DOMAIN}\n"
                f"interface = public\nservice_token_roles_required = true\n\n")
        file_sections = "".join(
            f"[{store}]\nfilesystem_store_datadir = {conf['datadir']}/\n"
            f"filesystem_store_metadata_file = {w}/store-{store}-metadata.json\n\n"
            for store, conf in self.file_stores.items())
        return f"""\
# Written by tools/lab/glance.py: the lab's Glance, loopback only, {"behind the lab's Keystone" if self.keystone is not None else "no Keystone"}.
[DEFAULT]
debug = {self.debug}
use_stderr = true
bind_host = {LOOPBACK}
bind_port = {self.port}
public_endpoint = {self.endpoint}
worker_self_reference_url = {self.endpoint}
enabled_backends = fs:file, web:http{rbd_backend}{file_backends}
show_image_direct_url = True
show_multiple_locations = True
image_cache_dir = {w}/cache

[database]
connection = sqlite:///{w}/glance.sqlite

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = {w}/images/
{meta}
{rbd_section}{file_sections}{auth_section}[os_glance_staging_store]
filesystem_store_datadir = {w}/staging/

[os_glance_tasks_store]
filesystem_store_datadir = {w}/tasks/

[import_filtering_opts]
allowed_hosts = [127.0.0.1,localhost]
allowed_ports = []

[oslo_concurrency]
lock_path = {w}/locks

[paste_deploy]
flavor = lab
config_file = {w}/glance-api-paste.ini
"""

    def _paste_ini(self) -> str:
        shipped = self.venv / "etc" / "glance" / "glance-api-paste.ini"
        base = shipped.read_text() if shipped.exists() else FALLBACK_PASTE
        return (f"# Glance's own {shipped.name} plus the lab pipeline "
                f"(tools/lab/glance.py)\n{base}\n"
                + LAB_PASTE_SECTIONS.format(
                    workdir=self.workdir,
                    auth_filter="labauth" if self.keystone is None else "authtoken-lab")
                + ("" if self.keystone is None else KEYSTONE_PASTE_SECTION))

    def _uwsgi_ini(self) -> str:
        # http-socket, not http: uWSGI's http router breaks chunked uploads.
        return f"""\
[uwsgi]
home = {self.venv}
module = glance.wsgi.api:application
http-socket = {LOOPBACK}:{self.port}
chunked-input-limit = {CHUNKED_INPUT_LIMIT}
master = true
processes = {self.processes}
threads = {self.threads}
lazy-apps = true
enable-threads = true
need-app = true
die-on-term = true
thunder-lock = true
buffer-size = 65535
# http-socket closes after each response; say so, or clients reuse a dead connection
# (ConnectionResetError on the next request). devstack does the same.
add-header = Connection: close
worker-reload-mercy = 5
"""

    def _db_sync(self) -> None:
        """Create the sqlite schema (cached per glance venv: a copy is instant)."""
        db = self.workdir / "glance.sqlite"
        cache = LAB_DIR / "cache" / f"glance-{self._venv_stamp()}.sqlite"
        if cache.exists():
            shutil.copyfile(cache, db)
            return
        cmd = [self._bin("glance-manage"), "--config-file",
               str(self.workdir / "glance-api.conf"), "db", "sync"]
        with open(self.log_file, "ab") as log:
            log.write(f"+ {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, timeout=120, check=True,
                               env=dict(os.environ, **self.environment()))
            except (subprocess.SubprocessError, OSError) as exc:
                raise ServiceError(f"glance: db sync failed ({exc}); log {self.log_file}")
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        shutil.copyfile(db, tmp)
        tmp.replace(cache)

    def _venv_stamp(self) -> str:
        """Changes when the glance venv is rebuilt (install-deps rewrites its stamp)."""
        stamp = LAB_DIR / "stamps" / "venv-glance"
        try:
            return stamp.read_text().strip()[:16] or "x"
        except OSError:
            return str(int((self.venv / "pyvenv.cfg").stat().st_mtime))

    def file_store_dir(self, store: str) -> Path:
        """Datadir of a file store ("fs" or one of file_stores)."""
        if store == "fs":
            return self.images_dir
        return Path(self.file_stores[store]["datadir"])

    # -- clients --------------------------------------------------------------------
    def session(self, token: str = "lab-admin") -> Any:
        """keystoneauth Session with the admin_token plugin (what Nova's [glance] uses)."""
        from keystoneauth1 import loading, session
        auth = loading.get_plugin_loader("admin_token").load_from_options(
            endpoint=self.endpoint, token=token)
        return session.Session(auth=auth)

    def client(self, token: str = "lab-admin") -> Any:
        """python-glanceclient v2 Client for this Glance as the given lab token."""
        from glanceclient import Client
        return Client("2", session=self.session(token))

    def keystone_client(self, user: str, project: str, password: str | None = None) -> Any:
        """glanceclient v2 as a Keystone user (keystoneauth password session; the
        image endpoint comes from the catalog). Only with keystone=..."""
        if self.keystone is None:
            raise ServiceError(f"{self.name}: not behind Keystone")
        from glanceclient import Client
        return Client("2", session=self.keystone.session(user, project, password),
                      region_name="RegionOne")

    def nova_conf_keystone(self) -> str:
        """nova.conf as devstack writes it for this Glance behind Keystone (catalog
        lookup, service user token, barbican key manager): keystone.nova_conf_keystone."""
        if self.keystone is None:
            raise ServiceError(f"{self.name}: not behind Keystone")
        from .keystone import nova_conf_keystone
        return nova_conf_keystone(self.keystone)

    def nova_conf(self, token: str = "lab-admin") -> str:
        """nova.conf snippet pointing Nova's image API client at this Glance (behind
        Keystone: ``nova_conf_keystone()``, token is then unused)."""
        if self.keystone is not None:
            return self.nova_conf_keystone()
        return (f"[glance]\nauth_type = admin_token\nendpoint = {self.endpoint}\n"
                f"token = {token}\n")

    def shell_env(self, token: str = "lab-admin") -> str:
        """Shell exports for clients (glance CLI with --os-auth-token, our tests)."""
        return (f"export IH_LAB_GLANCE_ENDPOINT={self.endpoint}\n"
                f"export OS_IMAGE_URL={self.endpoint}\nexport OS_AUTH_TOKEN={token}\n")


def _check_rbd_stores(stores: Mapping[str, tuple[Any, str]],
                      file_stores: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """rbd_stores as given, refusing names a config section or store already has."""
    for store, (_ceph, pool) in stores.items():
        if (not re.fullmatch(r"[a-z][a-z0-9_-]*", store) or store in RESERVED_STORE_NAMES
                or store in file_stores):
            raise ValueError(f"bad, reserved or duplicate rbd store name {store!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", pool):
            raise ValueError(f"rbd store {store}: bad pool name {pool!r}")
    return dict(stores)


def _check_file_stores(stores: Mapping[str, tuple[Path | str, Mapping[str, str]]]
                       ) -> dict[str, dict[str, Any]]:
    """Normalize file_stores to ``{store: {"datadir": str, "metadata": {...}}}`` (the
    form kept in state.json) and refuse what glance_store would quietly mishandle:
    it returns EMPTY location metadata when the datadir is not under the mountpoint."""
    out: dict[str, dict[str, Any]] = {}
    for store, (datadir, metadata) in stores.items():
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", store) or store in RESERVED_STORE_NAMES:
            raise ValueError(f"bad or reserved file store name {store!r}")
        meta = {k: str(v) for k, v in metadata.items()}
        if not meta.get("id") or not meta.get("mountpoint"):
            raise ValueError(f"store {store}: metadata needs 'id' and 'mountpoint': {meta}")
        path = os.path.abspath(datadir)
        if not (path + "/").startswith(meta["mountpoint"].rstrip("/") + "/"):
            raise ValueError(f"store {store}: datadir {path} is not under "
                             f"{meta['mountpoint']}")
        out[store] = {"datadir": path, "metadata": meta}
    return out
