"""The lab's RabbitMQ 3.10 (Debian's rabbitmq-server), the cloud's message bus.

Nova's services talk over oslo.messaging; devstack runs RabbitMQ for that. Here one
broker per run dir, loopback only, everything private to its work dir:

* its own ``epmd`` on a free port (``ERL_EPMD_PORT``), started in the same process
  group, so stopping this broker never touches another lab's epmd (Erlang would
  otherwise start a shared, self-detaching one on 4369);
* node ``lab-<run>@localhost``, AMQP on ``127.0.0.1:<free port>``, the Erlang
  distribution port free too, mnesia, logs, cookie (HOME) in the work dir;
* no plugins (an empty enabled-plugins file: no management listener).

It runs as root from /usr/lib/rabbitmq/bin (Debian's /usr/sbin wrapper would ``su``
to the rabbitmq user and detach). Clients use the default ``guest`` account, which
RabbitMQ accepts from loopback only: ``transport_url`` gives the URL.
~4 s to start (measured in LAB-NOTES).
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import ClassVar

from .service import LOOPBACK, LabService, ServiceError, free_port, port_open, state_port

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
EPMD = "/usr/bin/epmd"


class RabbitMQService(LabService):
    """One RabbitMQ node: ``transport_url``, ``port``."""

    name: ClassVar[str] = "rabbitmq"
    start_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 5.0

    def __init__(self, name: str | None = None, run_dir: Path | None = None) -> None:
        super().__init__(run_dir, name=name)

    port = property(state_port)

    @property
    def transport_url(self) -> str:
        """oslo.messaging's [DEFAULT] transport_url for this broker."""
        return f"rabbit://guest:guest@{LOOPBACK}:{self.port}/"

    def _node(self) -> str:
        tag = hashlib.sha256(str(self.workdir).encode()).hexdigest()[:8]
        return f"lab-{tag}@localhost"

    def prepare(self) -> None:
        server = RABBITMQ_BIN / "rabbitmq-server"
        if not server.exists() or not Path(EPMD).exists():
            raise ServiceError(f"{self.name}: {server} or {EPMD} missing: run "
                               "tools/install-deps.sh (rabbitmq-server)")
        for key in ("port", "dist_port", "epmd_port"):
            self.state[key] = free_port()
        if port_open(LOOPBACK, self.port):
            raise ServiceError(f"{self.name}: port {self.port} is already in use")
        w = self.workdir
        for sub in ("home", "mnesia", "log"):
            (w / sub).mkdir(mode=0o700)
        cookie = w / "home" / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (w / "enabled_plugins").write_text("[].\n")
        (w / "rabbitmq.conf").write_text(
            f"# Written by tools/lab/rabbitmq.py: loopback only.\n"
            f"listeners.tcp.default = {LOOPBACK}:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = true\nlog.console.level = warning\n"
            "log.file.level = info\n"
            # The machine's disk is often > 70 % full: never block publishers for it.
            "disk_free_limit.absolute = 1MB\n")
        self.state.update(node=self._node(), transport_url=self.transport_url,
                          endpoint=self.transport_url)
        self.save_state()

    def environment(self) -> dict[str, str]:
        w = self.workdir
        return {
            "HOME": str(w / "home"),
            "RABBITMQ_NODENAME": self._node(),
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.state["port"]),
            "RABBITMQ_DIST_PORT": str(self.state["dist_port"]),
            "ERL_EPMD_PORT": str(self.state["epmd_port"]),
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(w / "rabbitmq.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
        }

    def command(self) -> list[str]:
        # epmd first, in our process group (Erlang then uses it instead of starting
        # a detached one); the broker in the foreground.
        script = (f'{EPMD} -port "$ERL_EPMD_PORT" -address {LOOPBACK} & '
                  f'i=0; until {EPMD} -port "$ERL_EPMD_PORT" -names >/dev/null 2>&1; do '
                  'i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.05; done; '
                  f'exec {RABBITMQ_BIN}/rabbitmq-server')
        return ["/bin/sh", "-c", script]

    def is_healthy(self) -> bool:
        return "port" in self.state and port_open(LOOPBACK, self.port)
