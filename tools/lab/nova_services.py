"""The lab cloud's Placement and Nova daemons, from the patched Nova's venv.

All run from ``.lab/venv-nova`` (Nova 34 from PyPI with nova_patches/ applied and
image_handlers installed: tools/install-deps.sh), as devstack runs them:

* ``UwsgiApp``: a WSGI API under uWSGI (``http-socket`` + ``Connection: close``, as
  the lab's Keystone and Glance): Placement (``placement.wsgi.api``, config dir in
  ``OS_PLACEMENT_CONFIG_DIR``) and the compute API (``nova.wsgi.osapi_compute``,
  ``OS_NOVA_CONFIG_DIR`` with nova.conf and Nova's shipped api-paste.ini). The uWSGI
  binary is the Glance venv's (built for the same /usr/bin/python3.11; ``home``
  selects Nova's venv), so Nova's venv needs no uWSGI of its own.
* ``NovaDaemon``: nova-conductor, nova-scheduler, nova-compute, each
  ``nova-<name> --config-file ...`` in the foreground, its log in its work dir.
  Healthy once it reported its state itself (the report_count of its row in the
  cell database's services table went up since the spawn: the first report comes
  after its RPC servers and start hooks ran; a row left by an earlier process of a
  restarted service does not count); nova-compute when its compute node row is
  there too (the resource tracker ran, so discover_hosts can map it).

Stdlib only at import time (the health checks read the cell database through the
caller's query function: the cloud's MariaDB client).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from .service import LAB_DIR, LOOPBACK, LabService, ServiceError, http_ok

NOVA_VENV = LAB_DIR / "venv-nova"
UWSGI = LAB_DIR / "venv-glance" / "bin" / "uwsgi"


class UwsgiApp(LabService):
    """One WSGI API of the cloud under uWSGI: ``endpoint``."""

    start_timeout: ClassVar[float] = 90.0
    stop_timeout: ClassVar[float] = 3.0

    def __init__(self, name: str, module: str, config_env: dict[str, str], *,
                 port: int, processes: int = 1, threads: int = 4,
                 health_path: str = "/", run_dir: Path | None = None) -> None:
        """module: ``pkg.mod:application``. config_env: how the app finds its
        config (e.g. OS_NOVA_CONFIG_DIR). port: chosen by the caller (its configs
        and the catalog name it first). health_path: an unauthenticated GET."""
        super().__init__(run_dir, name=name)
        self.port = port
        self.module, self.config_env = module, dict(config_env)
        self.processes, self.threads, self.health_path = processes, threads, health_path

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def prepare(self) -> None:
        if not UWSGI.exists() or not (NOVA_VENV / "bin" / "python").exists():
            raise ServiceError(f"{self.name}: {UWSGI} or {NOVA_VENV} missing: run "
                               "tools/install-deps.sh")
        port = self.port
        self.state.update(port=port, endpoint=self.endpoint)
        env_lines = "".join(f"env = {k}={v}\n" for k, v in self.config_env.items())
        (self.workdir / "uwsgi.ini").write_text(f"""\
# Written by tools/lab/nova_services.py.
[uwsgi]
home = {NOVA_VENV}
module = {self.module}
http-socket = {LOOPBACK}:{port}
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
{env_lines}env = PYTHONDONTWRITEBYTECODE=1
""")
        self.save_state()

    def command(self) -> list[str]:
        return [str(UWSGI), "--ini", str(self.workdir / "uwsgi.ini")]

    def is_healthy(self) -> bool:
        return http_ok(self.endpoint + self.health_path)


class NovaDaemon(LabService):
    """nova-conductor / nova-scheduler / nova-compute in the foreground."""

    start_timeout: ClassVar[float] = 120.0
    # stop() removes the service's dir anyway: no graceful drain (SIGKILL after 2 s).
    stop_timeout: ClassVar[float] = 2.0

    def __init__(self, binary: str, config_files: list[Path],
                 cell_query: Callable[[str], list[list[str]]], host: str,
                 *, run_dir: Path | None = None, name: str | None = None) -> None:
        """binary: nova-conductor, nova-scheduler or nova-compute. cell_query: runs
        one SELECT on the cell database, returns its rows (the health check's
        reads). host: [DEFAULT] host."""
        super().__init__(run_dir, name=name or binary)
        self.binary, self.config_files = binary, list(config_files)
        self.cell_query, self.host = cell_query, host

    def prepare(self) -> None:
        exe = NOVA_VENV / "bin" / self.binary
        if not exe.exists():
            raise ServiceError(f"{self.name}: {exe} missing: run tools/install-deps.sh")
        # Its services row outlives a restart: the new process is up only once it
        # reported its state itself (report_count past this; the first report comes
        # ~5 s after its RPC servers and start hooks ran).
        self.state.update(binary=self.binary, host=self.host,
                          report_count_before=self._report_count() or 0)
        self.save_state()

    def _report_count(self) -> int | None:
        """The services row's report_count, or None (no row, no database yet)."""
        try:
            rows = self.cell_query(
                "SELECT report_count FROM services WHERE host = '%s' AND `binary` = '%s' "
                "AND deleted = 0" % (self.host, self.binary))
        except ServiceError:
            return None
        return int(rows[0][0]) if rows else None

    def command(self) -> list[str]:
        argv = [str(NOVA_VENV / "bin" / self.binary)]
        for conf in self.config_files:
            argv += ["--config-file", str(conf)]
        return argv + ["--log-file", str(self.workdir / f"{self.binary}.log")]

    @property
    def service_log(self) -> Path:
        """What the daemon logs through oslo.log (the handlers' reasons, for compute)."""
        return self.workdir / f"{self.binary}.log"

    def environment(self) -> dict[str, str]:
        return {"PYTHONDONTWRITEBYTECODE": "1"}

    def is_healthy(self) -> bool:
        count = self._report_count()
        if count is None or count <= int(self.state.get("report_count_before", 0)):
            return False
        if self.binary != "nova-compute":
            return True
        try:
            return bool(self.cell_query("SELECT id FROM compute_nodes WHERE host = '%s' "
                                        "AND deleted = 0" % self.host))
        except ServiceError:
            return False
