"""A STAND-IN for Neutron's API that knows no ports: the lab cloud has no Neutron.

The lab cloud (tools/lab/cloud.py) boots servers with ``networks: none``
(compute API 2.37+): Nova allocates nothing and never asks Neutron while it builds
one. But Nova 34 still asks Neutron when it DELETES a server (``deallocate_for_
instance`` lists the ports whose device_id is the server, and an empty network info
is refreshed with ``get_instance_nw_info``), whatever the server was booted with; with
no network endpoint the delete fails and the server goes to ERROR. A real Neutron
needs an L2 agent (Open vSwitch or Linux bridge: kernel modules this machine does not
have) to be more than this anyway, and the issue's cloud is one without Neutron.

So this answers only the reads Nova makes for a server without ports, each with the
empty answer a real Neutron gives for one: ``GET /v2.0/ports`` -> ``{"ports": []}``,
``/v2.0/networks``, ``/v2.0/subnets``, ``/v2.0/security-groups``,
``/v2.0/floatingips`` -> empty lists, ``/v2.0/extensions`` -> no extensions.
Anything else (a write, another resource) is answered 501 with a body that says a
stand-in refused it, so a test that needs a real Neutron fails loudly. Every request
is logged. Nova reaches it through ``[neutron] endpoint_override``; it is NOT in the
Keystone catalog (no client mistakes it for a Neutron).

    python -m tools.lab.neutron_standin --port P   # (NeutronStandinService runs it)
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

from .service import LOOPBACK, REPO_ROOT, LabService, ServiceError, free_port, http_ok

# collection path under /v2.0 -> the JSON key of its (empty) listing
EMPTY_LISTINGS = {
    "ports": "ports", "networks": "networks", "subnets": "subnets",
    "security-groups": "security_groups", "floatingips": "floatingips",
    "extensions": "extensions",
}


class _Handler(BaseHTTPRequestHandler):
    server_version = "lab-neutron-standin/1"

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        if path in ("", "/"):
            self._send(200, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
                {"href": f"http://{LOOPBACK}:{self.server.server_port}/v2.0/",
                 "rel": "self"}]}]})
            return
        parts = path.split("/")
        if len(parts) == 3 and parts[1] == "v2.0":
            name = parts[2].removesuffix(".json")
            if name in EMPTY_LISTINGS:
                self._send(200, {EMPTY_LISTINGS[name]: []})
                return
        self._refuse()

    def _refuse(self) -> None:
        self._send(501, {"NeutronError": {
            "type": "NotImplementedByLabStandin",
            "message": f"{self.command} {self.path}: the lab cloud has no Neutron; its "
                       "stand-in (tools/lab/neutron_standin.py) answers only empty "
                       "listings for servers booted with networks 'none'",
            "detail": ""}})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")
        sys.stderr.flush()


class NeutronStandinService(LabService):
    """The stand-in as a lab daemon: ``endpoint``."""

    name: ClassVar[str] = "neutron-standin"
    stop_timeout: ClassVar[float] = 2.0

    def __init__(self, name: str | None = None, run_dir: Path | None = None,
                 python: str | None = None) -> None:
        super().__init__(run_dir, name=name)
        self.python = python or sys.executable

    @property
    def endpoint(self) -> str:
        if "port" not in self.state:
            raise ServiceError(f"{self.name}: not started (no port in state)")
        return f"http://{LOOPBACK}:{self.state['port']}"

    def prepare(self) -> None:
        self.state["port"] = free_port()
        self.state["endpoint"] = self.endpoint
        self.save_state()

    def command(self) -> list[str]:
        return [self.python, "-m", "tools.lab.neutron_standin", "--port",
                str(self.state["port"])]

    def environment(self) -> dict[str, str]:
        return {"PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1"}

    def is_healthy(self) -> bool:
        return "port" in self.state and http_ok(self.endpoint + "/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((LOOPBACK, args.port), _Handler)
    print(f"neutron stand-in on {LOOPBACK}:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
