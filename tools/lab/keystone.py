"""The lab's real Keystone 30 (PyPI) under uWSGI on loopback, with devstack-like accounts.

Keystone runs from ``.lab/venv-identity`` (tools/install-deps.sh; Barbican shares it):
``keystone.wsgi.api:application`` under uWSGI (``http-socket`` + ``Connection: close``,
or python-requests POSTs get ECONNRESET), a sqlite DB, fernet tokens. Start-up:
``keystone-manage db_sync`` (its schema cached per venv under .lab/cache), ``fernet_setup``
and ``credential_setup`` (beside the sync), ``bootstrap``, then the daemon, then the
accounts below through Keystone's REST API (stdlib urllib, idempotent; a reused running
Keystone is checked and topped up, not rebuilt). The DB as bootstrap and the accounts
leave it is kept in .lab/cache: a later fresh Keystone copies it, makes its own fernet
and credential keys, re-points the identity endpoints at its port and checks the
accounts (~8.5 s instead of ~12 s: fernet_setup and credential_setup remain).

Accounts (all in domain Default; the lab's fixed passwords, ``PASSWORDS``):

==========  ============  ==========================  =========================
user        project       roles                       password
==========  ============  ==========================  =========================
admin       admin         admin (bootstrap)           lab-secret-admin
nova        service       service, admin              lab-secret-nova
glance      service       service, admin              lab-secret-glance
barbican    service       service, admin              lab-secret-barbican
alice       alpha         member, reader              lab-secret-alice
bob         beta          member, reader              lab-secret-bob
==========  ============  ==========================  =========================

devstack's ``create_service_user NAME [ROLE]`` gives a service user the ``service`` role
in project ``service`` (and ``create_service_user nova admin`` gives Nova ``admin``
too); the lab gives all three service users both ``service`` and ``admin``, so a
service token carries ``X-Service-Roles: service,admin`` as a devstack Nova's does.
Bootstrap makes the roles admin > member > reader (implied), region ``RegionOne`` and
the ``identity`` service with public and internal endpoints ``http://127.0.0.1:PORT/v3``.
``register_endpoint(service_type, name, url)`` adds (or re-points) others, e.g.
``image`` for the lab's Glance, ``key-manager`` for Barbican.

Lab-only settings: ``[identity] password_hash_rounds = 4`` (bcrypt's minimum: a password
check costs ~1 ms instead of ~0.25 s), ``[cache]`` in process (dogpile memory backend,
so ONE uWSGI process: token validation drops from ~0.17 s to ~0.05 s). Clients: keystoneauth
(``session(user, project)``, password plugin), as Nova and the services use it.

``nova_conf_keystone(keystone)`` returns the nova.conf sections devstack
writes for such a cloud (catalog lookups, service user token, barbican key manager).
Stdlib only at import time (keystoneauth is imported inside ``session()``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

from .service import (LAB_DIR, LOOPBACK, LabService, ServiceError, free_port, http_ok,
                      port_open, state_port)

IDENTITY_VENV = LAB_DIR / "venv-identity"
REGION = "RegionOne"
DOMAIN = "Default"
SERVICE_PROJECT = "service"
SERVICE_USERS = ("nova", "glance", "barbican")
SERVICE_USER_ROLES = ("service", "admin")
MEMBER_ROLES = ("member", "reader")
# user -> project it is a member of (roles MEMBER_ROLES)
MEMBERS = {"alice": "alpha", "bob": "beta"}
PASSWORDS = {user: f"lab-secret-{user}"
             for user in ("admin", *SERVICE_USERS, *MEMBERS)}


def password_of(user: str) -> str:
    """The lab's fixed password of a lab user (KeyError for an unknown one)."""
    return PASSWORDS[user]


class KeystoneService(LabService):
    """Keystone on 127.0.0.1:<port>: ``auth_url``, ``session()``, ``token()``,
    ``register_endpoint()``, ``project_id()``, ``user_id()``."""

    name: ClassVar[str] = "keystone"
    # ~3 s idle; its saml2/xmlschema imports took more than 30 s at load 10 (helpers
    # running labs in parallel), and a lab that fails to start fails whole suites.
    start_timeout: ClassVar[float] = 120.0
    stop_timeout: ClassVar[float] = 2.0  # stop() deletes everything anyway

    def __init__(self, port: int | None = None, *, venv: Path | None = None,
                 threads: int = 4, debug: bool = False,
                 name: str | None = None, run_dir: Path | None = None) -> None:
        """port: fixed port (else a free one). name: instance name (work dir).
        One uWSGI process with ``threads`` threads: Keystone's in-process cache
        (dogpile memory backend) would go stale across processes."""
        super().__init__(run_dir, name=name)
        self.venv = Path(venv or IDENTITY_VENV)
        self.requested_port = port
        self.threads, self.debug = threads, debug
        self._admin_token: str | None = None

    # -- where things are -------------------------------------------------------
    port = property(state_port)

    @property
    def endpoint(self) -> str:
        """http://127.0.0.1:PORT (no version)."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def auth_url(self) -> str:
        """Identity v3 URL, what ``auth_url`` options take: http://127.0.0.1:PORT/v3."""
        return self.endpoint + "/v3"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "keystone.conf"

    def _bin(self, name: str) -> str:
        path = self.venv / "bin" / name
        if not path.exists():
            raise ServiceError(f"{self.name}: {path} missing; run tools/install-deps.sh")
        return str(path)

    # -- LabService hooks ---------------------------------------------------------
    def prepare(self) -> None:
        self.state["port"] = self.requested_port or free_port()
        if port_open(LOOPBACK, self.port):
            raise ServiceError(f"{self.name}: port {LOOPBACK}:{self.port} is already in use")
        self.state["endpoint"] = self.endpoint
        self.state["auth_url"] = self.auth_url
        self.conf_path.write_text(self._conf())
        (self.workdir / "uwsgi.ini").write_text(self._uwsgi_ini())
        self._manage_setup()
        self.save_state()

    def command(self) -> list[str]:
        return [self._bin("uwsgi"), "--ini", str(self.workdir / "uwsgi.ini")]

    def environment(self) -> dict[str, str]:
        return {"OS_KEYSTONE_CONFIG_FILES": str(self.conf_path),
                "PYTHONDONTWRITEBYTECODE": "1"}

    def is_healthy(self) -> bool:
        return "port" in self.state and http_ok(self.auth_url)

    def start(self) -> "KeystoneService":
        """Start (or reuse) Keystone, then make sure the lab's accounts exist."""
        super().start()
        self._admin_token = None
        if self.reused and self.state.get("accounts") == _accounts_digest():
            return self
        if self.state.get("from_snapshot") and not self.reused:
            # The snapshot holds the accounts; its identity endpoints name an old port.
            self.register_endpoint("identity", "keystone", self.auth_url + "/")
            self.state["project_ids"] = self._by_name("projects")
        else:
            self._ensure_accounts()
        self.state["accounts"] = _accounts_digest()
        self.save_state()
        if not self.state.get("from_snapshot"):
            self._save_snapshot()
        return self

    def _snapshot_path(self) -> Path:
        digest = hashlib.sha256(_accounts_digest().encode()).hexdigest()[:12]
        return LAB_DIR / "cache" / f"keystone-{_venv_stamp(self.venv)}-{digest}.sqlite"

    def _save_snapshot(self) -> None:
        """Keep the DB as bootstrap + accounts left it (nothing else registered yet):
        the next fresh Keystone copies it instead of running db_sync and bootstrap
        (~4 s less). Fernet and credential keys are never in it (made per instance)."""
        snap = self._snapshot_path()
        snap.parent.mkdir(parents=True, exist_ok=True)
        tmp = snap.with_suffix(f".tmp{os.getpid()}")
        src = sqlite3.connect(self.workdir / "keystone.sqlite")
        try:
            dst = sqlite3.connect(tmp)
            with dst:
                src.backup(dst)
            dst.close()
        finally:
            src.close()
        tmp.replace(snap)

    # -- config and keystone-manage ----------------------------------------------------
    def _conf(self) -> str:
        w = self.workdir
        return f"""\
# Written by tools/lab/keystone.py: the lab's Keystone, loopback only.
[DEFAULT]
debug = {self.debug}
use_stderr = true
public_endpoint = {self.endpoint}

[database]
connection = sqlite:///{w}/keystone.sqlite

[token]
provider = fernet
expiration = 7200

[fernet_tokens]
key_repository = {w}/fernet-keys

[fernet_receipts]
key_repository = {w}/fernet-receipts

[credential]
key_repository = {w}/credential-keys

[identity]
# bcrypt's minimum: the lab's passwords are public anyway, a check costs ~1 ms.
password_hash_rounds = 4

[cache]
# In-process cache: token validation makes ~90 SQL queries without it (~0.17 s per
# request on sqlite, ~0.05 s with it). One uWSGI process, so no cache goes stale.
enabled = true
backend = dogpile.cache.memory
"""

    def _uwsgi_ini(self) -> str:
        return f"""\
[uwsgi]
home = {self.venv}
module = keystone.wsgi.api:application
http-socket = {LOOPBACK}:{self.port}
master = true
processes = 1
threads = {self.threads}
lazy-apps = true
enable-threads = true
need-app = true
die-on-term = true
thunder-lock = true
buffer-size = 65535
# http-socket closes after each response: say so, or python-requests reuses a dead
# connection (ECONNRESET on the next POST).
add-header = Connection: close
worker-reload-mercy = 5
"""

    def _manage(self, *args: str) -> subprocess.Popen[bytes]:
        """Start one keystone-manage command, output to the log (passwords masked)."""
        cmd = [self._bin("keystone-manage"), "--config-file", str(self.conf_path), *args]
        shown = ["***" if prev == "--bootstrap-password" else a
                 for prev, a in zip(["", *cmd], cmd)]
        with open(self.log_file, "ab") as log:
            log.write(f"+ {' '.join(shown)}\n".encode())
            log.flush()
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=self.workdir,
                                    env=dict(os.environ, **self.environment()))

    @staticmethod
    def _wait(proc: subprocess.Popen[bytes], what: str, timeout: float = 120) -> None:
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9
        if rc != 0:
            raise ServiceError(f"keystone-manage {what} failed (status {rc})")

    def _manage_setup(self) -> None:
        """db_sync (or a copy of the cached schema) beside fernet_setup and
        credential_setup, then bootstrap (admin, roles, region, identity endpoints)."""
        who = ("--keystone-user", "root", "--keystone-group", "root")
        try:
            keys = [(self._manage("fernet_setup", *who), "fernet_setup"),
                    (self._manage("credential_setup", *who), "credential_setup")]
            db = self.workdir / "keystone.sqlite"
            snap = self._snapshot_path()
            if snap.exists():  # bootstrapped, with the accounts: see _save_snapshot
                shutil.copyfile(snap, db)
                for proc, what in keys:
                    self._wait(proc, what)
                self.state["from_snapshot"] = True
                return
            cache = LAB_DIR / "cache" / f"keystone-{_venv_stamp(self.venv)}.sqlite"
            if cache.exists():
                shutil.copyfile(cache, db)
            else:
                self._wait(self._manage("db_sync"), "db_sync")
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(f".tmp{os.getpid()}")
                shutil.copyfile(db, tmp)
                tmp.replace(cache)
            for proc, what in keys:
                self._wait(proc, what)
            self._wait(self._manage(
                "bootstrap", "--bootstrap-password", password_of("admin"),
                "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
                "--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone",
                "--bootstrap-region-id", REGION,
                "--bootstrap-public-url", self.auth_url + "/",
                "--bootstrap-internal-url", self.auth_url + "/"), "bootstrap")
        except OSError as exc:
            raise ServiceError(f"{self.name}: keystone-manage: {exc}") from exc
        except ServiceError as exc:
            raise ServiceError(f"{self.name}: {exc}; log {self.log_file}") from exc

    # -- REST as admin (stdlib: works from any venv) -------------------------------
    def _request(self, method: str, path: str, body: Any = None, *,
                 token: str | None = None, headers: dict[str, str] | None = None
                 ) -> tuple[int, dict[str, str], Any]:
        """One call to Keystone; returns (status, headers, parsed JSON or None)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.endpoint + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("X-Auth-Token", token)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=30) as resp:
                status, hdrs, raw = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            status, hdrs, raw = exc.code, dict(exc.headers), exc.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return status, hdrs, parsed

    def password_token(self, user: str, project: str | None,
                       password: str | None = None, *, system: bool = False
                       ) -> tuple[str, dict[str, Any]]:
        """(token id, token body) for a password auth scoped to project, or to the
        system (system=True), or unscoped (project None)."""
        auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {
            "user": {"name": user, "domain": {"name": DOMAIN},
                     "password": password or password_of(user)}}}}
        if system:
            auth["scope"] = {"system": {"all": True}}
        elif project:
            auth["scope"] = {"project": {"name": project, "domain": {"name": DOMAIN}}}
        status, hdrs, body = self._request("POST", "/v3/auth/tokens", {"auth": auth})
        if status != 201:
            raise ServiceError(f"{self.name}: token for {user}/{project}: {status} {body}")
        return hdrs["X-Subject-Token"], body["token"]

    def _admin(self, method: str, path: str, body: Any = None,
               ok: tuple[int, ...] = (200, 201, 204)) -> Any:
        if self._admin_token is None:
            # System scope: the identity admin APIs' policies accept it whatever
            # oslo.policy's enforce_scope says (bootstrap grants it to admin).
            self._admin_token = self.password_token("admin", None, system=True)[0]
        status, _, parsed = self._request(method, path, body, token=self._admin_token)
        if status not in ok:
            raise ServiceError(f"{self.name}: {method} {path}: {status} {parsed}")
        return parsed

    def _find(self, collection: str, **filters: str) -> dict[str, Any] | None:
        query = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in filters.items())
        found = self._admin("GET", f"/v3/{collection}?{query}")[collection]
        return found[0] if found else None

    def _by_name(self, collection: str, query: str = "") -> dict[str, str]:
        """name -> id of everything in a collection (one GET)."""
        return {e["name"]: e["id"]
                for e in self._admin("GET", f"/v3/{collection}{query}")[collection]}

    def _ensure_accounts(self) -> None:
        """Roles, projects, users and grants of the table in the module docstring:
        one listing per collection, then only what is missing (~20 calls, ~1 s)."""
        domain = self._admin("GET", "/v3/domains?name=Default")["domains"][0]["id"]
        roles = self._by_name("roles")
        for role in ("admin", "member", "reader", "service"):
            if role not in roles:
                roles[role] = self._admin("POST", "/v3/roles",
                                          {"role": {"name": role}})["role"]["id"]
        projects = self._by_name("projects", f"?domain_id={domain}")
        for project in (SERVICE_PROJECT, *MEMBERS.values()):
            if project not in projects:
                projects[project] = self._admin("POST", "/v3/projects", {"project": {
                    "name": project, "domain_id": domain,
                    "description": "tools/lab/keystone.py"}})["project"]["id"]
        users = self._by_name("users", f"?domain_id={domain}")
        grants = [(u, SERVICE_PROJECT, SERVICE_USER_ROLES) for u in SERVICE_USERS]
        grants += [(u, p, MEMBER_ROLES) for u, p in MEMBERS.items()]
        for user, project, user_roles in grants:
            if user not in users:
                users[user] = self._admin("POST", "/v3/users", {"user": {
                    "name": user, "domain_id": domain, "password": password_of(user),
                    "default_project_id": projects[project], "enabled": True}})["user"]["id"]
            for role in user_roles:  # PUT is idempotent
                self._admin("PUT", f"/v3/projects/{projects[project]}/users/"
                                   f"{users[user]}/roles/{roles[role]}")
        self.state["project_ids"] = projects
        self.save_state()

    # -- catalog ----------------------------------------------------------------------
    def register_endpoint(self, service_type: str, name: str, url: str,
                          interfaces: tuple[str, ...] = ("public", "internal")) -> str:
        """Make service ``name`` of ``service_type`` have exactly ``url`` on each
        interface in region RegionOne (creates the service and endpoints, re-points a
        stale URL, drops duplicates). Returns the service id. Idempotent."""
        service = self._find("services", type=service_type)
        if service is None:
            service = self._admin("POST", "/v3/services", {"service": {
                "type": service_type, "name": name, "enabled": True}})["service"]
        elif service.get("name") != name:
            self._admin("PATCH", f"/v3/services/{service['id']}",
                        {"service": {"name": name}})
        sid = service["id"]
        endpoints = self._admin("GET", f"/v3/endpoints?service_id={sid}")["endpoints"]
        for interface in interfaces:
            mine = [e for e in endpoints if e["interface"] == interface
                    and e.get("region_id") == REGION]
            if not mine:
                self._admin("POST", "/v3/endpoints", {"endpoint": {
                    "service_id": sid, "interface": interface, "url": url,
                    "region_id": REGION, "enabled": True}})
                continue
            keep, extra = mine[0], mine[1:]
            if keep["url"] != url or not keep.get("enabled", True):
                self._admin("PATCH", f"/v3/endpoints/{keep['id']}",
                            {"endpoint": {"url": url, "enabled": True}})
            for e in extra:
                self._admin("DELETE", f"/v3/endpoints/{e['id']}")
        return sid

    def catalog_url(self, service_type: str, interface: str = "public") -> str | None:
        """The URL the catalog gives for service_type (admin view), or None."""
        service = self._find("services", type=service_type)
        if service is None:
            return None
        endpoints = self._admin("GET", f"/v3/endpoints?service_id={service['id']}"
                                       f"&interface={interface}")["endpoints"]
        return endpoints[0]["url"] if endpoints else None

    # -- lookups for tests ------------------------------------------------------------
    def project_id(self, project: str) -> str:
        """Id of a lab project by name (admin, service, alpha, beta)."""
        ids = self.state.setdefault("project_ids", {})
        if project not in ids:
            found = self._find("projects", name=project)
            if found is None:
                raise KeyError(project)
            ids[project] = found["id"]
        return ids[project]

    def user_id(self, user: str) -> str:
        found = self._find("users", name=user)
        if found is None:
            raise KeyError(user)
        return found["id"]

    # -- clients ----------------------------------------------------------------------
    def auth(self, user: str, project: str, password: str | None = None) -> Any:
        """keystoneauth v3 Password plugin for user in project (domains Default)."""
        from keystoneauth1.identity import v3
        return v3.Password(auth_url=self.auth_url, username=user,
                           password=password or password_of(user),
                           user_domain_name=DOMAIN, project_name=project,
                           project_domain_name=DOMAIN)

    def session(self, user: str, project: str, password: str | None = None) -> Any:
        """keystoneauth1 Session with the password plugin (user/project domain Default)."""
        from keystoneauth1 import session
        return session.Session(auth=self.auth(user, project, password))

    def token(self, user: str, project: str, password: str | None = None) -> str:
        """A fresh project-scoped token id for user (through keystoneauth)."""
        return self.session(user, project, password).get_token()

    def shell_env(self, user: str = "admin", project: str = "admin") -> str:
        """OS_* exports for the openstack CLI or keystoneauth's env loading."""
        return (f"export OS_AUTH_URL={self.auth_url}\nexport OS_IDENTITY_API_VERSION=3\n"
                f"export OS_USERNAME={user}\nexport OS_PASSWORD={password_of(user)}\n"
                f"export OS_PROJECT_NAME={project}\nexport OS_USER_DOMAIN_NAME={DOMAIN}\n"
                f"export OS_PROJECT_DOMAIN_NAME={DOMAIN}\nexport OS_REGION_NAME={REGION}\n")


def _venv_stamp(venv: Path) -> str:
    """Changes when the venv is rebuilt (install-deps rewrites its stamp)."""
    try:
        return (LAB_DIR / "stamps" / venv.name).read_text().strip()[:16] or "x"
    except OSError:
        try:
            return str(int((venv / "pyvenv.cfg").stat().st_mtime))
        except OSError:
            return "none"


def _accounts_digest() -> str:
    """Changes when the account table above changes (a reused Keystone is topped up)."""
    return json.dumps([SERVICE_USERS, SERVICE_USER_ROLES, MEMBER_ROLES, MEMBERS],
                      sort_keys=True)


# -- nova.conf as devstack writes it ---------------------------------------------------
def _password_auth(keystone: KeystoneService, user: str,
                   project: str = SERVICE_PROJECT) -> dict[str, str]:
    return {"auth_type": "password", "auth_url": keystone.auth_url,
            "username": user, "password": password_of(user),
            "user_domain_name": DOMAIN, "project_name": project,
            "project_domain_name": DOMAIN}


def nova_conf_keystone_dict(keystone: KeystoneService) -> dict[str, dict[str, Any]]:
    """nova.conf for a Nova in the lab's Keystone cloud as ``{group: {option: value}}``
    (what tests give oslo.config ``set_override``; ``nova_conf_keystone`` renders it).

    * ``[glance]``: password auth as nova in project service and ``region_name``; NO
      endpoint_override: the image endpoint comes from the catalog (``image``).
    * ``[service_user]``: ``send_service_user_token = true`` + password auth as nova,
      so Nova's calls carry X-Service-Token (Glance's service-role APIs).
    * ``[keystone_authtoken]``: nova's own token validation (no memcached_servers:
      keystonemiddleware then caches in process).
    * ``[key_manager] backend = barbican`` and ``[barbican]`` with castellan's option
      names: ``auth_endpoint`` = Keystone v3, ``barbican_endpoint_type = public``,
      ``barbican_region_name``, ``barbican_api_version``, ``number_of_retries``,
      ``retry_delay``; no ``barbican_endpoint``: castellan finds ``key-manager`` in
      the catalog (BarbicanService registers it).
    """
    nova = _password_auth(keystone, "nova")
    return {
        "glance": {**nova, "region_name": REGION, "valid_interfaces": "public"},
        "service_user": {"send_service_user_token": True, **nova},
        "keystone_authtoken": {**nova, "www_authenticate_uri": keystone.auth_url,
                               "interface": "public"},
        "key_manager": {"backend": "barbican"},
        "barbican": {"auth_endpoint": keystone.auth_url,
                     "barbican_endpoint_type": "public",
                     "barbican_region_name": REGION,
                     "barbican_api_version": "v1",
                     "number_of_retries": 10, "retry_delay": 1},
    }


def nova_conf_keystone(keystone: KeystoneService) -> str:
    """nova.conf text (devstack style) for the lab's Keystone cloud; the options are
    those of ``nova_conf_keystone_dict``."""
    out = ["# Written by tools/lab/keystone.py: Nova in the lab's Keystone cloud."]
    for group, opts in nova_conf_keystone_dict(keystone).items():
        out.append(f"\n[{group}]")
        for key, value in opts.items():
            text = str(value).lower() if isinstance(value, bool) else value
            out.append(f"{key} = {text}")
    return "\n".join(out) + "\n"
