"""The lab cloud's SQL server: MariaDB 10.11 (Debian's mariadb-server), as devstack's.

Nova's services (API workers, conductor, scheduler) and Placement write their
databases from a dozen processes at once. sqlite cannot take that: a transaction
that read first and then writes gets SQLITE_BUSY at once when another process wrote
meanwhile (no busy timeout helps), and builds failed with "database is locked" on
a loaded machine. So the cloud runs a private MariaDB, loopback only:

* its datadir, socket, pid file and log in its work dir (``mariadb-install-db``
  once, ~3 s; then ``mariadbd`` in the foreground, ~2 s);
* TCP on ``127.0.0.1:<free port>``, ``skip-name-resolve``, small buffers;
* one account ``lab`` (password ``lab-secret-db``) with all privileges, for the
  PyMySQL URLs Nova and Placement use: ``url(database)``; ``create_databases()``.

    db = MariaDBService(name="cloud-mariadb").start()
    db.create_databases("nova_api", "nova_cell0", "nova_cell1", "placement")
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import ClassVar

from .service import LOOPBACK, LabService, ServiceError, free_port, port_open, state_port

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"
CLIENT = "/usr/bin/mariadb"
USER, PASSWORD = "lab", "lab-secret-db"


class MariaDBService(LabService):
    """One private MariaDB server: ``port``, ``url(db)``, ``create_databases()``."""

    name: ClassVar[str] = "mariadb"
    start_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 3.0

    def __init__(self, name: str | None = None, run_dir: Path | None = None) -> None:
        super().__init__(run_dir, name=name)

    port = property(state_port)

    @property
    def socket_path(self) -> Path:
        return self.workdir / "mysqld.sock"

    def url(self, database: str) -> str:
        """oslo.db URL of one database (PyMySQL over TCP)."""
        return (f"mysql+pymysql://{USER}:{PASSWORD}@{LOOPBACK}:{self.port}/{database}"
                "?charset=utf8")

    def _conf(self) -> str:
        w = self.workdir
        return f"""\
# Written by tools/lab/mariadb.py: the lab cloud's private MariaDB, loopback only.
[mariadbd]
datadir = {w}/data
socket = {self.socket_path}
pid-file = {w}/mysqld.pid
log-error = {w}/mysqld.err
port = {self.port}
bind-address = {LOOPBACK}
skip-name-resolve
user = root
innodb_buffer_pool_size = 64M
innodb_log_file_size = 16M
innodb_flush_log_at_trx_commit = 2
max_connections = 500
character-set-server = utf8mb3
"""

    def prepare(self) -> None:
        missing = [p for p in (MARIADBD, INSTALL_DB, CLIENT) if not Path(p).exists()]
        if missing:
            raise ServiceError(f"{self.name}: {', '.join(missing)} missing: run "
                               "tools/install-deps.sh (mariadb-server)")
        self.state["port"] = free_port()
        if port_open(LOOPBACK, self.port):
            raise ServiceError(f"{self.name}: port {self.port} is already in use")
        (self.workdir / "my.cnf").write_text(self._conf())
        self._run([INSTALL_DB, f"--defaults-file={self.workdir / 'my.cnf'}",
                   "--auth-root-authentication-method=socket", "--skip-test-db"],
                  "mariadb-install-db")
        self.state["endpoint"] = f"mysql://{LOOPBACK}:{self.port}"
        self.save_state()

    def command(self) -> list[str]:
        return [MARIADBD, f"--defaults-file={self.workdir / 'my.cnf'}"]

    def is_healthy(self) -> bool:
        return "port" in self.state and port_open(LOOPBACK, self.port) and \
            self.socket_path.is_socket()

    def start(self) -> "MariaDBService":
        super().start()
        if not self.reused:
            self.sql(f"CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1' "
                     f"IDENTIFIED BY '{PASSWORD}'; GRANT ALL PRIVILEGES ON *.* TO "
                     f"'{USER}'@'127.0.0.1'; FLUSH PRIVILEGES;")
        return self

    def sql(self, statements: str) -> str:
        """Run statements as root over the socket (root's socket authentication)."""
        return self._run([CLIENT, f"--socket={self.socket_path}", "-uroot", "-e",
                          statements], "mariadb")

    def sql_rows(self, select: str, database: str) -> list[list[str]]:
        """Rows of one SELECT (batch mode: tab-separated, no column names)."""
        out = self._run([CLIENT, f"--socket={self.socket_path}", "-uroot", "-N", "-B",
                         database, "-e", select], "mariadb")
        return [line.split("\t") for line in out.splitlines() if line]

    def create_databases(self, *names: str) -> None:
        self.sql(" ".join(f"CREATE DATABASE IF NOT EXISTS {n} CHARACTER SET utf8;"
                          for n in names))

    def _run(self, argv: list[str], what: str) -> str:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=120, cwd=self.workdir,
                              env=dict(os.environ))
        if proc.returncode != 0:
            raise ServiceError(f"{self.name}: {what} failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        return proc.stdout
