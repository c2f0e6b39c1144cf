"""A plain web server (Debian's nginx) serving a directory on loopback.

It plays an http(s) image location (Glance's http store points at servers like it)
and is the "plain local HTTP server" baseline of the benchmark: sendfile, Range and
ETag support, no Python in the serving path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tools.lab.service import LOOPBACK, LabService, ServiceError, free_port, http_ok

NGINX = "/usr/sbin/nginx"


class NginxService(LabService):
    name = "nginx"
    start_timeout = 15.0

    @property
    def port(self) -> int:
        return int(self.state["port"])

    @property
    def docroot(self) -> Path:
        return self.workdir / "www"

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def url_for(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def publish(self, source: Path, name: str | None = None) -> str:
        """Hard-link (or copy) a file into the docroot; return its URL."""
        dest = self.docroot / (name or source.name)
        try:
            dest.hardlink_to(source)
        except OSError:
            shutil.copyfile(source, dest)
        return self.url_for(dest.name)

    def prepare(self) -> None:
        if not Path(NGINX).exists():
            raise ServiceError(f"{NGINX} missing: run tools/install-deps.sh (nginx-light)")
        self.docroot.mkdir()
        (self.docroot / "health").write_text("ok\n")
        self.state["port"] = self.state.get("port") or free_port()
        w = self.workdir
        (w / "nginx.conf").write_text(f"""\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {w}/access.log;
    client_body_temp_path {w}/tmp-body;
    proxy_temp_path {w}/tmp-proxy;
    fastcgi_temp_path {w}/tmp-fcgi;
    uwsgi_temp_path {w}/tmp-uwsgi;
    scgi_temp_path {w}/tmp-scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server {{
        listen {LOOPBACK}:{self.state['port']};
        root {self.docroot};
    }}
}}
""")
        self.save_state()

    def command(self) -> list[str]:
        return [NGINX, "-c", str(self.workdir / "nginx.conf"), "-p", str(self.workdir)]

    def is_healthy(self) -> bool:
        return http_ok(f"{self.base_url}/health")
