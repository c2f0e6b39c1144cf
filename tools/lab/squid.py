"""A real HTTP cache (Debian's squid 5) for stream_copy's cache tier and the fleet bench.

Memory-only cache (no cache_dir) sized for lab images, collapsed forwarding on (many
hosts asking for one object at once make ONE request upstream), Range requests served
from the cached object (``range_offset_limit none``: squid fetches the whole object
once and answers every range from it), every object fresh for an hour (image bytes
at a URL do not change; the hash check catches one that did). ``parent`` makes it a
child cache of another squid (a two-tier tree). ``netns`` runs it inside a network
namespace (tools/lab/fleet.py) listening on that namespace's address.

squid drops root for the ``proxy`` user (Debian's), so its files (config, logs, pid)
live in a directory that user can reach: the work dir when every parent directory is
open to others, else a directory of its own under /tmp, removed by ``stop()``.
Each instance has its own service name (``-n``), so several run side by side.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tools.lab.service import LOOPBACK, LabService, ServiceError, free_port, port_open

SQUID = "/usr/sbin/squid"
USER = "proxy"


class SquidService(LabService):
    name = "squid"
    start_timeout = 30.0

    def __init__(self, run_dir: Path | None = None, *, name: str | None = None,
                 host: str = LOOPBACK, port: int | None = None,
                 parent: tuple[str, int] | None = None, netns: str | None = None,
                 cache_mem_mb: int = 512, max_object_mb: int = 2048) -> None:
        super().__init__(run_dir, name=name)
        self.host = host
        self.wanted_port = port
        self.parent = parent
        self.netns = netns
        self.cache_mem_mb = cache_mem_mb
        self.max_object_mb = max_object_mb

    @property
    def port(self) -> int:
        return int(self.state["port"])

    @property
    def proxy_url(self) -> str:
        """What a client puts in its proxy setting (stream_copy's http_cache proxy=)."""
        return f"http://{self.host}:{self.port}"

    @property
    def files(self) -> Path:
        """Where squid's config, logs and pid file are (see the module docstring)."""
        return Path(self.state.get("files_dir") or self.workdir)

    @property
    def access_log(self) -> Path:
        return self.files / "access.log"

    def _service_name(self) -> str:
        # squid's -n: letters and digits only; it names the instance's shared memory.
        return "ih" + re.sub(r"[^A-Za-z0-9]", "", self.name)[:24] + str(self.port)

    def prepare(self) -> None:
        if not Path(SQUID).exists():
            raise ServiceError(f"{SQUID} missing: run tools/install-deps.sh (squid)")
        self.state["port"] = self.wanted_port or self.state.get("port") or free_port()
        self.state.update(host=self.host, netns=self.netns,
                          parent=list(self.parent) if self.parent else None)
        w = self.workdir
        if not _reachable_by_others(w):
            w = Path(tempfile.mkdtemp(prefix=f"ih-{self.name}-"))
            os.chmod(w, 0o755)
            self.own_path(w)
        self.state["files_dir"] = str(w)
        peer = ""
        if self.parent:
            # Everything goes to the parent (never straight to the origin): a tree.
            peer = (f"cache_peer {self.parent[0]} parent {self.parent[1]} 0 "
                    f"no-query no-digest default\nnever_direct allow all\n")
        mem = self.cache_mem_mb
        obj = min(self.max_object_mb, mem)
        (w / "squid.conf").write_text(f"""\
http_port {self.host}:{self.port}
visible_hostname {self.name}
pid_filename {w}/squid.pid
cache_log {w}/cache.log
access_log stdio:{w}/access.log squid
logformat squid %ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt
cache_store_log none
coredump_dir {w}
cache_effective_user {USER}
pinger_enable off
workers 1
shutdown_lifetime 0 seconds
cache_mem {mem} MB
maximum_object_size_in_memory {obj} MB
maximum_object_size {obj} MB
memory_cache_mode always
collapsed_forwarding on
range_offset_limit none
quick_abort_min -1 KB
read_ahead_gap 64 MB
refresh_pattern . 60 100% 1440 override-lastmod
acl localnet src 127.0.0.0/8 10.0.0.0/8
http_access allow localnet
http_access deny all
via on
forwarded_for on
dns_nameservers 127.0.0.1
{peer}""")
        user = pwd.getpwnam(USER)
        os.chown(w, user.pw_uid, user.pw_gid)
        self.save_state()
        for path in w.iterdir():
            os.chown(path, user.pw_uid, user.pw_gid)

    def command(self) -> list[str]:
        argv = [SQUID, "-N", "-n", self._service_name(), "-f",
                str(self.files / "squid.conf")]
        if self.netns:
            return ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def is_healthy(self) -> bool:
        if self.netns:  # not reachable from here: its log says when it listens
            try:
                log = (self.files / "cache.log").read_text(errors="replace")
            except OSError:
                return False
            return "Accepting HTTP Socket connections" in log
        return port_open(self.host, self.port)

    def stop(self) -> None:
        prefix = self._service_name() if self.state.get("port") else None
        super().stop()
        # squid's shared memory segments are named after -n: gone with the process
        # normally, removed here when it was killed.
        if prefix:
            for seg in Path("/dev/shm").glob(f"*{prefix}*"):
                seg.unlink(missing_ok=True)

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict]:
        """GET ``url`` through this cache (for tests and warming): status, body, headers."""
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": self.proxy_url}))
        req = urllib.request.Request(url, headers=headers or {})
        try:
            with opener.open(req, timeout=30) as resp:
                return resp.status, resp.read(), dict(resp.headers.items())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers.items())

    def log_lines(self) -> list[str]:
        """The access log (one line per request: result code, bytes, URL)."""
        try:
            return self.access_log.read_text().splitlines()
        except OSError:
            return []


def _reachable_by_others(path: Path) -> bool:
    """Every directory from / to ``path`` lets others through (x for other)."""
    for part in [path, *path.parents]:
        try:
            if not os.stat(part).st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def squid_available() -> bool:
    return shutil.which(SQUID) is not None or Path(SQUID).exists()
