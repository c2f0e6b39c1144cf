"""A simulated fleet on one machine: N hosts in network namespaces with tc-shaped
links, squid caches in one or two tiers, and an nginx origin (bench/bench_fleet.py).

Layout (all addresses in 10.213.0.0/16, inside namespaces only; nothing touches the
machine's own interfaces):

    core ns:   bridge br0, one veth port per namespace below
    origin:    nginx on 10.213.0.2:8080, link shaped to ``origin_mbit``
    tier 1:    squid on 10.213.0.3:3128 (parent: the origin), link ``cache_mbit``
    tier 2:    ``edges`` squids on 10.213.0.(10+k):3128, parent tier 1 (two tiers)
    hosts:     10.213.(1+i//250).(1+i%250), links ``host_mbit``; host i uses the
               edge i % edges (or tier 1 with one tier)

Shaping is tc's token bucket filter (``tbf``) on both ends of every veth (the
namespace side shapes what the host sends, the bridge side what it receives); netem
is not built into this kernel, so links have no added delay. Everything is torn
down by ``down()`` (services stopped, namespaces deleted), also after a failure.
What a killed run (kill -9) left is removed by ``python -m tools.lab.fleet clean``:
the namespaces (and the daemons still in them) and tmpfs mounts of fleets whose
process is gone (their names carry its pid); ``python -m tools.lab stop all``
removes their service dirs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
import sys
import subprocess
import time
from pathlib import Path

from tools.lab.service import LabService, ServiceError, _proc_stat
from tools.lab.squid import SquidService

NGINX = "/usr/sbin/nginx"
NET = "10.213"
ORIGIN_IP = f"{NET}.0.2"
TIER1_IP = f"{NET}.0.3"
ORIGIN_PORT = 8080
SQUID_PORT = 3128
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@dataclasses.dataclass(frozen=True)
class Layout:
    hosts: int
    tiers: int = 1                  # 1: one squid; 2: tier 1 + ``edges`` squids
    edges: int = 2
    host_mbit: int = 100
    cache_mbit: int = 1000
    origin_mbit: int = 1000

    def __post_init__(self) -> None:
        if self.hosts < 1 or self.hosts > 1000:
            raise ValueError(f"hosts={self.hosts}: give 1..1000")
        if self.tiers not in (1, 2):
            raise ValueError(f"tiers={self.tiers}: give 1 or 2")
        if self.tiers == 2 and not 1 <= self.edges <= 50:
            raise ValueError(f"edges={self.edges}: give 1..50")

    def describe(self) -> str:
        tree = ("1 squid" if self.tiers == 1
                else f"1 parent squid + {self.edges} child squids")
        return (f"{self.hosts} hosts at {self.host_mbit} Mbit/s, {tree} at "
                f"{self.cache_mbit} Mbit/s, origin at {self.origin_mbit} Mbit/s")


def host_ip(i: int) -> str:
    return f"{NET}.{1 + i // 250}.{1 + i % 250}"


def edge_ip(k: int) -> str:
    return f"{NET}.0.{10 + k}"


def _run(argv: list[str], stdin: str | None = None) -> None:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if proc.returncode:
        raise ServiceError(f"{' '.join(argv[:6])}: {proc.stderr.strip() or proc.stdout}"
                           + (f"\ninput:\n{stdin[:600]}" if stdin else ""))


def enter_netns(name: str) -> None:
    """Move the CALLING THREAD into network namespace ``name`` (setns is per
    thread; threads it starts inherit it): one process can then play many hosts."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its waited-for children, in seconds."""
    st = _proc_stat(pid)
    if not st:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(st[i]) for i in (11, 12, 13, 14)) / ticks


class OriginService(LabService):
    """nginx serving a directory inside the origin namespace; its access log keeps
    the body bytes of every response (what the origin sent)."""

    name = "fleet-origin"
    start_timeout = 20.0

    def __init__(self, run_dir: Path, netns: str, name: str | None = None) -> None:
        super().__init__(run_dir, name=name)
        self.netns = netns

    @property
    def docroot(self) -> Path:
        return self.workdir / "www"

    def url_for(self, name: str) -> str:
        return f"http://{ORIGIN_IP}:{ORIGIN_PORT}/{name}"

    def prepare(self) -> None:
        self.docroot.mkdir()
        w = self.workdir
        (w / "nginx.conf").write_text(f"""\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format bytes '$request_uri $status $body_bytes_sent $http_range';
    access_log {w}/access.log bytes;
    client_body_temp_path {w}/tmp-body;
    proxy_temp_path {w}/tmp-proxy;
    fastcgi_temp_path {w}/tmp-fcgi;
    uwsgi_temp_path {w}/tmp-uwsgi;
    scgi_temp_path {w}/tmp-scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server {{
        listen {ORIGIN_IP}:{ORIGIN_PORT};
        root {self.docroot};
        location / {{ add_header Cache-Control "public, max-age=3600"; }}
    }}
}}
""")
        self.save_state()

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns, NGINX, "-c",
                str(self.workdir / "nginx.conf"), "-p", str(self.workdir)]

    def is_healthy(self) -> bool:
        return (self.workdir / "nginx.pid").exists()

    def sent(self, name: str) -> tuple[int, int]:
        """(responses, body bytes) the origin sent for ``/name``."""
        count = total = 0
        try:
            lines = (self.workdir / "access.log").read_text().splitlines()
        except OSError:
            return 0, 0
        for line in lines:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == f"/{name}":
                count += 1
                total += int(parts[2])
        return count, total


class Fleet:
    """``Fleet(layout, run_dir).up()`` ... ``down()``; see the module docstring."""

    def __init__(self, layout: Layout, run_dir: Path, tag: str | None = None) -> None:
        self.layout = layout
        # Services directly under the run dir (named after the tag), so that
        # ``python -m tools.lab stop all`` finds and stops them after a kill -9.
        self.run_dir = Path(run_dir)
        self.tag = tag or f"ihf{os.getpid()}"
        self.core = f"{self.tag}-core"
        self.origin_ns = f"{self.tag}-origin"
        self.cache_ns = [f"{self.tag}-t1"] + (
            [f"{self.tag}-e{k}" for k in range(layout.edges)] if layout.tiers == 2 else [])
        self.host_ns = [f"{self.tag}-h{i}" for i in range(layout.hosts)]
        self.origin: OriginService | None = None
        self.squids: list[SquidService] = []
        self.setup_seconds = 0.0

    # -- the network -------------------------------------------------------------

    def _namespaces(self) -> list[str]:
        return [self.core, self.origin_ns, *self.cache_ns, *self.host_ns]

    def _ports(self) -> list[tuple[str, str, str, int]]:
        """(namespace, bridge port name, address, Mbit/s) of every endpoint."""
        lay = self.layout
        ports = [(self.origin_ns, "o", ORIGIN_IP, lay.origin_mbit),
                 (self.cache_ns[0], "t1", TIER1_IP, lay.cache_mbit)]
        ports += [(ns, f"e{k}", edge_ip(k), lay.cache_mbit)
                  for k, ns in enumerate(self.cache_ns[1:])]
        ports += [(ns, f"h{i}", host_ip(i), lay.host_mbit)
                  for i, ns in enumerate(self.host_ns)]
        return ports

    @staticmethod
    def _tbf(dev: str, mbit: int) -> str:
        # burst: a few ms at the rate, and at least 64 KiB (GSO segments).
        burst = max(64 * 1024, mbit * 1000 * 1000 // 8 // 250)
        return f"qdisc add dev {dev} root tbf rate {mbit}mbit burst {burst} latency 50ms"

    def _network_up(self) -> None:
        existing = set(subprocess.run(["ip", "netns", "list"], capture_output=True,
                                      text=True).stdout.split())
        clash = [ns for ns in self._namespaces() if ns in existing]
        if clash:
            raise ServiceError(f"network namespaces {clash[:3]} already exist: another "
                               f"fleet with tag {self.tag} runs, or was left behind "
                               f"(ip netns del NAME)")
        _run(["ip", "-b", "-"], "".join(f"netns add {ns}\n" for ns in self._namespaces()))
        ports = self._ports()
        core = ["link add br0 type bridge", "link set br0 up"]
        for ns, port, _addr, _mbit in ports:
            core.append(f"link add {port} type veth peer name eth0 netns {ns}")
            core.append(f"link set {port} master br0 up")
        _run(["ip", "-n", self.core, "-b", "-"], "\n".join(core) + "\n")
        _run(["tc", "-n", self.core, "-b", "-"],
             "".join(self._tbf(port, mbit) + "\n" for _ns, port, _a, mbit in ports))
        for ns, _port, addr, mbit in ports:
            _run(["ip", "-n", ns, "-b", "-"],
                 f"link set lo up\naddr add {addr}/16 dev eth0\nlink set eth0 up\n")
            _run(["tc", "-n", ns, "qdisc", *self._tbf("eth0", mbit).split()[1:]])

    def _network_down(self) -> list[str]:
        listed = set(subprocess.run(["ip", "netns", "list"], capture_output=True,
                                    text=True).stdout.split())
        mine = [ns for ns in self._namespaces() if ns in listed]
        if not mine:
            return []
        proc = subprocess.run(["ip", "-force", "-b", "-"], capture_output=True, text=True,
                              input="".join(f"netns del {ns}\n" for ns in mine))
        return [proc.stderr.strip()] if proc.returncode else []

    # -- services ----------------------------------------------------------------

    def up(self) -> "Fleet":
        t0 = time.monotonic()
        try:
            self._network_up()
            self.origin = OriginService(self.run_dir, self.origin_ns,
                                        name=f"{self.tag}-origin")
            self.origin.start()
            t1 = SquidService(self.run_dir, name=f"{self.tag}-t1", host=TIER1_IP,
                              port=SQUID_PORT, parent=(ORIGIN_IP, ORIGIN_PORT),
                              netns=self.cache_ns[0], cache_mem_mb=1024)
            self.squids = [t1.start()]
            for k, ns in enumerate(self.cache_ns[1:]):
                self.squids.append(SquidService(
                    self.run_dir, name=f"{self.tag}-e{k}", host=edge_ip(k), port=SQUID_PORT,
                    parent=(TIER1_IP, SQUID_PORT), netns=ns, cache_mem_mb=1024).start())
        except BaseException:
            self.down()
            raise
        self.setup_seconds = time.monotonic() - t0
        return self

    def proxy_for(self, i: int) -> str:
        """The cache host i reads through (its group's edge, or tier 1)."""
        if self.layout.tiers == 1:
            return f"http://{TIER1_IP}:{SQUID_PORT}"
        return f"http://{edge_ip(i % self.layout.edges)}:{SQUID_PORT}"

    def group_of(self, i: int) -> int:
        return 0 if self.layout.tiers == 1 else i % self.layout.edges

    def service_cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the origin and each squid."""
        out = {}
        for svc in [self.origin, *self.squids]:
            if svc is not None and svc.pid():
                pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                        and (_proc_stat(int(p.name)) or [0, 0, -1])[2] == str(svc.pid())]
                out[svc.name] = sum(process_cpu_seconds(p) for p in pids)
        return out

    def down(self) -> None:
        """Stop every service, delete every namespace; raise if something stayed."""
        problems = []
        for svc in [*reversed(self.squids), self.origin]:
            if svc is None:
                continue
            try:
                svc.stop()
            except (ServiceError, OSError) as exc:
                problems.append(str(exc))
        self.squids, self.origin = [], None
        problems += self._network_down()
        if problems:
            raise ServiceError("fleet teardown: " + "; ".join(problems))


def leftovers() -> tuple[list[str], list[str]]:
    """(namespaces, tmpfs mounts) of fleets whose process is no longer alive."""
    def dead(pid: str) -> bool:
        return not Path(f"/proc/{pid}").exists()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True,
                           text=True).stdout.split()
    spaces = [n for n in names if (m := re.match(r"^ihf(\d+)-", n)) and dead(m.group(1))]
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f]
    disks = [m for m in mounts if (x := re.search(r"/ih-fleet-disks-(\d+)-", m))
             and dead(x.group(1))]
    return spaces, disks


def clean() -> int:
    """Remove what killed fleets left (see the module docstring)."""
    spaces, disks = leftovers()
    for ns in spaces:
        # Only the fleet's own daemons (nginx, squid) run in its namespaces.
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split():
            try:
                os.kill(int(pid), 9)
                print(f"{ns}: killed process {pid}")
            except ProcessLookupError:
                pass
        _run(["ip", "netns", "del", ns])
        print(f"{ns}: deleted")
    for path in disks:
        subprocess.run(["umount", "-l", path], check=False)
        os.rmdir(path)
        print(f"{path}: unmounted and removed")
    if not spaces and not disks:
        print("nothing left by a fleet")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["clean"]:
        sys.exit("usage: python -m tools.lab.fleet clean")
    sys.exit(clean())
