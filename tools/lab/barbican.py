"""The lab's real Barbican 23 (PyPI) under uWSGI on loopback, behind the lab's Keystone.

Barbican runs from ``.lab/venv-identity`` (Keystone's venv) with its shipped paste
pipeline for Keystone (``cors request_id http_proxy_to_wsgi authtoken context
microversion apiapp``): keystonemiddleware's auth_token validates tokens with the
``barbican`` service user. Secrets: ``store_crypto`` + ``simple_crypto`` with a KEK made
per instance, sqlite (schema by ``barbican-manage db upgrade``, cached per venv).

Pitfalls handled here (LAB-NOTES): Barbican's own ``barbican.wsgi.api`` hard-codes
/etc/barbican/barbican-api-paste.ini, and its plugins parse the config again at import
from oslo.config's default places (``~/.barbican/barbican.conf`` first): the daemon runs
with HOME=<workdir>/home holding ``.barbican/barbican.conf``, and a small wsgi module
(``barbican_labwsgi.py``, written into the work dir) loads our paste file. The
unauthenticated pipeline 500s on oslo.middleware 8.2 (request_id), so there is none.

After start it registers itself as ``key-manager`` (public + internal) in Keystone's
catalog, where castellan looks it up. ``endpoint`` is http://127.0.0.1:PORT.
Stdlib only at import time.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, ClassVar

from .keystone import DOMAIN, IDENTITY_VENV, SERVICE_PROJECT, _venv_stamp, password_of
from .service import (LAB_DIR, LOOPBACK, LabService, ServiceError, free_port, http_ok,
                      port_open, state_port)

PASTE_INI = """\
# Written by tools/lab/barbican.py: Barbican's shipped pipelines, Keystone auth only.
[composite:main]
use = egg:Paste#urlmap
/: barbican_version
/healthcheck: healthcheck
/v1: barbican-api-keystone

[pipeline:barbican_version]
pipeline = cors request_id http_proxy_to_wsgi microversion versionapp

[pipeline:barbican-api-keystone]
pipeline = cors request_id http_proxy_to_wsgi authtoken context microversion apiapp

[app:apiapp]
paste.app_factory = barbican.api.app:create_main_app

[app:versionapp]
paste.app_factory = barbican.api.app:create_version_app

[filter:context]
paste.filter_factory = barbican.api.middleware.context:ContextMiddleware.factory

[filter:microversion]
paste.filter_factory = barbican.api.middleware.microversion:MicroversionMiddleware.factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = barbican

[filter:request_id]
paste.filter_factory = oslo_middleware.request_id:RequestId.factory

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory

[app:healthcheck]
paste.app_factory = oslo_middleware:Healthcheck.app_factory
backends = disable_by_file
disable_by_file_path = {workdir}/healthcheck_disable
"""

WSGI_MODULE = '''\
"""Barbican's API app from the lab's paste file (tools/lab/barbican.py)."""
import os

from paste import deploy

application = deploy.loadapp("config:" + os.environ["IH_BARBICAN_PASTE_INI"])
'''


class BarbicanService(LabService):
    """Barbican API on 127.0.0.1:<port> behind ``keystone`` (a started
    KeystoneService): ``endpoint``, registered as ``key-manager``."""

    name: ClassVar[str] = "barbican"
    start_timeout: ClassVar[float] = 30.0
    stop_timeout: ClassVar[float] = 2.0

    def __init__(self, keystone: Any = None, port: int | None = None, *,
                 venv: Path | None = None, processes: int = 1, threads: int = 4,
                 debug: bool = False, name: str | None = None,
                 run_dir: Path | None = None) -> None:
        """keystone: a started KeystoneService (default: the default instance,
        started or reused). port: fixed port, else a free one."""
        super().__init__(run_dir, name=name)
        self.keystone = keystone
        self.venv = Path(venv or IDENTITY_VENV)
        self.requested_port = port
        self.processes, self.threads, self.debug = processes, threads, debug

    def _keystone(self) -> Any:
        if self.keystone is None:
            from .keystone import KeystoneService
            self.keystone = KeystoneService(run_dir=self.workdir.parent).start()
        return self.keystone

    # -- where things are -------------------------------------------------------
    port = property(state_port)

    @property
    def endpoint(self) -> str:
        """Key manager API endpoint, http://127.0.0.1:PORT (no version)."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def home(self) -> Path:
        return self.workdir / "home"

    @property
    def conf_path(self) -> Path:
        return self.home / ".barbican" / "barbican.conf"

    def _bin(self, name: str) -> str:
        path = self.venv / "bin" / name
        if not path.exists():
            raise ServiceError(f"{self.name}: {path} missing; run tools/install-deps.sh")
        return str(path)

    # -- LabService hooks ---------------------------------------------------------
    def prepare(self) -> None:
        keystone = self._keystone()
        self.state["port"] = self.requested_port or free_port()
        if port_open(LOOPBACK, self.port):
            raise ServiceError(f"{self.name}: port {LOOPBACK}:{self.port} is already in use")
        self.state["endpoint"] = self.endpoint
        self.state["keystone_auth_url"] = keystone.auth_url
        self.conf_path.parent.mkdir(parents=True)
        (self.workdir / "pylib").mkdir()
        self.conf_path.write_text(self._conf(keystone))
        self.conf_path.chmod(0o600)  # KEK and service password
        (self.workdir / "barbican-api-paste.ini").write_text(
            PASTE_INI.format(workdir=self.workdir))
        (self.workdir / "pylib" / "barbican_labwsgi.py").write_text(WSGI_MODULE)
        (self.workdir / "uwsgi.ini").write_text(self._uwsgi_ini())
        self._db_upgrade()
        self.save_state()

    def command(self) -> list[str]:
        return [self._bin("uwsgi"), "--ini", str(self.workdir / "uwsgi.ini")]

    def environment(self) -> dict[str, str]:
        return {"HOME": str(self.home), "PYTHONPATH": str(self.workdir / "pylib"),
                "IH_BARBICAN_PASTE_INI": str(self.workdir / "barbican-api-paste.ini"),
                "PYTHONDONTWRITEBYTECODE": "1"}

    def is_healthy(self) -> bool:
        return "port" in self.state and http_ok(self.endpoint + "/healthcheck")

    def matches_config(self) -> bool:
        """Still behind the same Keystone (a restarted Keystone has new fernet keys)."""
        return self.state.get("keystone_auth_url") == self._keystone().auth_url

    def start(self) -> "BarbicanService":
        """Start (or reuse) Barbican and (re)register it as ``key-manager``."""
        super().start()
        self._keystone().register_endpoint("key-manager", "barbican", self.endpoint)
        return self

    # -- config -----------------------------------------------------------------------
    def _conf(self, keystone: Any) -> str:
        w = self.workdir
        kek = base64.urlsafe_b64encode(os.urandom(32)).decode()
        return f"""\
# Written by tools/lab/barbican.py: the lab's Barbican, loopback only.
[DEFAULT]
debug = {self.debug}
use_stderr = true
host_href = {self.endpoint}

[database]
connection = sqlite:///{w}/barbican.sqlite

[secretstore]
enabled_secretstore_plugins = store_crypto

[crypto]
enabled_crypto_plugins = simple_crypto

[simple_crypto_plugin]
kek = {kek}

[queue]
enable = false

[keystone_notifications]
enable = false

[keystone_authtoken]
auth_type = password
auth_url = {keystone.auth_url}
www_authenticate_uri = {keystone.auth_url}
username = barbican
password = {password_of("barbican")}
user_domain_name = {DOMAIN}
project_name = {SERVICE_PROJECT}
project_domain_name = {DOMAIN}
interface = public
service_token_roles_required = true
"""

    def _uwsgi_ini(self) -> str:
        return f"""\
[uwsgi]
home = {self.venv}
module = barbican_labwsgi:application
http-socket = {LOOPBACK}:{self.port}
master = true
processes = {self.processes}
threads = {self.threads}
lazy-apps = true
enable-threads = true
need-app = true
die-on-term = true
thunder-lock = true
buffer-size = 65535
add-header = Connection: close
worker-reload-mercy = 5
"""

    def _db_upgrade(self) -> None:
        """``barbican-manage db upgrade`` (or a copy of its result, cached per venv)."""
        db = self.workdir / "barbican.sqlite"
        cache = LAB_DIR / "cache" / f"barbican-{_venv_stamp(self.venv)}.sqlite"
        if cache.exists():
            shutil.copyfile(cache, db)
            return
        cmd = [self._bin("barbican-manage"), "db", "upgrade"]
        with open(self.log_file, "ab") as log:
            log.write(f"+ {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, cwd=self.workdir,
                               stderr=subprocess.STDOUT, timeout=120, check=True,
                               env=dict(os.environ, **self.environment()))
            except (subprocess.SubprocessError, OSError) as exc:
                raise ServiceError(f"{self.name}: db upgrade failed ({exc}); "
                                   f"log {self.log_file}") from exc
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        shutil.copyfile(db, tmp)
        tmp.replace(cache)
