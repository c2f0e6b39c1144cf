"""A real GlusterFS 10 volume (Debian's glusterfs-server): one brick, FUSE-mounted.

The shared_fs handler's "shared file system seen through FUSE" case: hard links work,
FICLONE does not (the FUSE mount answers EOPNOTSUPP), and Glance's file store can live
on it like on any NFS/Gluster share of a deployment.

    gluster = GlusterService().start()     # ~2 s; reuses a healthy running one
    gluster.mountpoint                     # <run>/gluster/mnt, type fuse.glusterfs
    gluster.stop()                         # umount, volume stop+delete, kill, remove

glusterd runs by hand in the foreground (``glusterd -N -f glusterd.vol``) with its own
``working-directory`` (state, normally /var/lib/glusterd), ``run-directory``,
``logging-directory`` and CLI socket, all in the work dir: Debian's /var/lib/glusterd
and its hook scripts are not used. The CLI and the FUSE client log into the work dir
too. Outside it, glusterd still creates a few fixed paths
(/var/lib/glusterd/{geo-replication,ss_brick}, /var/run/gluster/snaps) and each brick's
socket in /var/run/gluster: those it did not find are recorded and removed by stop().

ONE lab gluster per machine: bricks fetch their volfile from port 24007 of the brick
host whatever glusterd's listen-port says, so glusterd must listen there. start()
refuses when that port is taken (another run dir's lab gluster, a system glusterd).

The brick host is the machine's hostname, never 127.0.0.1/localhost (glusterd refuses
loopback names as brick hosts). It must resolve to a loopback address, which glusterd
and the brick bind (nothing listens beyond loopback). If the hostname does not resolve
at all, start() appends ``127.0.0.1 <hostname>`` to /etc/hosts and leaves it there
(the machine's hostname resolving is ordinary setup, and other processes may rely on
it by then).

Processes: glusterd is the process-group leader; the brick (glusterfsd) and the FUSE
client (glusterfs) daemonize out of the group, so their pids are recorded (own_pid)
and stop() kills them if they outlive ``volume stop`` and the umount.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar

from . import mounts
from .service import LabService, ServiceError, alive, port_open, tail

GLUSTERD = "/usr/sbin/glusterd"
GLUSTER = "/usr/sbin/gluster"
MOUNT = "/bin/mount"
MOUNT_GLUSTERFS = "/sbin/mount.glusterfs"
MGMT_PORT = 24007
VAR_RUN_GLUSTER = Path("/var/run/gluster")
# Created by glusterd whatever its working-directory: removed at stop if it made them.
GLUSTERD_FIXED_PATHS = ("/var/lib/glusterd/geo-replication", "/var/lib/glusterd/ss_brick",
                        "/var/run/gluster/snaps")
HOSTS_FILE = Path("/etc/hosts")


def brick_host() -> tuple[str, str]:
    """(hostname, its IPv4 loopback address); adds it to /etc/hosts if unresolvable."""
    host = socket.gethostname()
    addrs = _resolve(host)
    if not addrs:
        with open(HOSTS_FILE, "a") as f:
            f.write(f"\n127.0.0.1 {host}  # added by image_handlers tools/lab/gluster.py\n")
        addrs = _resolve(host)
    loopback = sorted(a for a in addrs if a.startswith("127."))
    if not loopback or len(loopback) != len(addrs):
        raise ServiceError(f"gluster: hostname {host!r} resolves to {sorted(addrs)}, not "
                           "only a loopback address: map it to 127.0.0.1 in /etc/hosts")
    return host, loopback[0]


def _resolve(host: str) -> set[str]:
    try:
        return {ai[4][0] for ai in socket.getaddrinfo(host, None, socket.AF_INET)}
    except socket.gaierror:
        return set()


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode("utf-8", "replace").split("\0")[:-1]


def volume_processes(brick_dir: Path, mountpoint: Path) -> dict[str, list[tuple[int, list[str]]]]:
    """Live brick and FUSE client processes of one volume, found by argv: the brick
    names its brick dir (``--brick-name``), the client ends with the mount point."""
    found: dict[str, list[tuple[int, list[str]]]] = {"brick": [], "fuse": []}
    brick, mnt = str(brick_dir), str(mountpoint)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not alive(int(entry.name)):
            continue
        argv = _cmdline(int(entry.name))
        if "--brick-name" in argv[:-1] and argv[argv.index("--brick-name") + 1] == brick:
            found["brick"].append((int(entry.name), argv))
        elif argv and argv[-1] == mnt and "fuse" in argv:
            found["fuse"].append((int(entry.name), argv))
    return found


class GlusterService(LabService):
    """glusterd + a one-brick volume mounted at ``mountpoint`` (``volume``, ``host``)."""

    name: ClassVar[str] = "gluster"
    start_timeout: ClassVar[float] = 30.0    # bound on the whole start
    stop_timeout: ClassVar[float] = 5.0
    command_timeout: ClassVar[float] = 30.0  # bound on each gluster/mount command

    def __init__(self, name: str = "gluster", *, volume: str = "labvol",
                 run_dir: Path | None = None) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad lab service name {name!r}")
        self.volume = volume
        self._booting = False
        super().__init__(run_dir, name=name)

    # -- where things are -------------------------------------------------------
    @property
    def mountpoint(self) -> Path:
        return self.workdir / "mnt"

    @property
    def brick_dir(self) -> Path:
        return self.workdir / "brick"

    @property
    def host(self) -> str:
        """The brick/volfile host (the machine's hostname)."""
        if "host" not in self.state:
            raise ServiceError(f"{self.name}: not started (no host in state)")
        return str(self.state["host"])

    @property
    def source(self) -> str:
        """What is mounted: ``HOST:/VOLUME``."""
        return f"{self.host}:/{self.volume}"

    @property
    def _socket(self) -> Path:
        return self.workdir / "run" / "glusterd.socket"

    def _log_dir(self) -> Path:
        return self.workdir / "log"

    # -- config -----------------------------------------------------------------------
    def _glusterd_vol(self, address: str) -> str:
        w = self.workdir
        return f"""\
# Written by tools/lab/gluster.py: the lab's glusterd, loopback only, state in {w}.
volume management
    type mgmt/glusterd
    option working-directory {w}/state
    option run-directory {w}/run
    option logging-directory {w}/log
    option glusterd-sockfile {self._socket}
    option transport-type socket
    option transport.address-family inet
    option transport.socket.listen-port {MGMT_PORT}
    option transport.socket.bind-address {address}
    option transport.socket.keepalive-time 10
    option transport.socket.keepalive-interval 2
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
end-volume
"""

    # -- LabService hooks ---------------------------------------------------------------
    def prepare(self) -> None:
        missing = [p for p in (GLUSTERD, GLUSTER, MOUNT_GLUSTERFS) if not Path(p).exists()]
        if missing:
            raise ServiceError(f"{self.name}: {', '.join(missing)} missing: run "
                               "tools/install-deps.sh (glusterfs-server glusterfs-client)")
        host, address = brick_host()
        if port_open(address, MGMT_PORT):
            raise ServiceError(
                f"{self.name}: {address}:{MGMT_PORT} is taken (another lab gluster, "
                "perhaps of another IH_LAB_RUN_DIR, or a system glusterd): only one lab "
                "gluster can run per machine (bricks fetch their volfile from port "
                f"{MGMT_PORT})")
        for sub in ("state", "run", "log", "brick", "mnt"):
            (self.workdir / sub).mkdir()
        for path in GLUSTERD_FIXED_PATHS:
            if not os.path.lexists(path):
                self.own_path(path)
        VAR_RUN_GLUSTER.mkdir(parents=True, exist_ok=True)  # brick sockets go there
        (self.workdir / "glusterd.vol").write_text(self._glusterd_vol(address))
        self.state.update(host=host, address=address, volume=self.volume,
                          mountpoint=str(self.mountpoint), ready=False)
        self.save_state()

    def command(self) -> list[str]:
        log = self._log_dir()
        return [GLUSTERD, "-N", "-f", str(self.workdir / "glusterd.vol"),
                "-l", str(log / "glusterd.log"), "-p", str(self.workdir / "run" / "glusterd.pid")]

    def is_healthy(self) -> bool:
        """While booting: glusterd answers. Else: set up, glusterd alive, mounted."""
        if "address" not in self.state or not self._socket.is_socket():
            return False
        if not port_open(self.state["address"], MGMT_PORT):
            return False
        if self._booting:
            return True
        return bool(self.state.get("ready")) and self._mounted() and self.is_running()

    def _mounted(self) -> bool:
        found = mounts.mount_of(self.mountpoint)
        return found is not None and found[0] == "fuse.glusterfs"

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "GlusterService":
        """Start glusterd, create and start the volume, mount it; or reuse it."""
        if self.is_running():
            self.state = self._load_state()
            if self.is_healthy():
                self.reused = True
                return self
        self.stop()
        t0 = time.monotonic()
        self._booting = True
        try:
            super().start()  # prepare() + glusterd, until it answers on its socket
        finally:
            self._booting = False
        phases = {"glusterd": round(time.monotonic() - t0, 2)}
        try:
            self._cli("volume", "create", self.volume,
                      f"{self.host}:{self.brick_dir}", "force")
            self._cli("volume", "start", self.volume)
            self._own_volume_processes(need=("brick",))
            phases["volume"] = round(time.monotonic() - t0, 2)
            self._run([MOUNT, "-t", "glusterfs", "-o",
                       f"log-file={self._log_dir() / 'fuse.log'}", self.source,
                       str(self.mountpoint)])
            self._own_volume_processes(need=("fuse",))
            if not self._mounted():
                raise ServiceError(f"{self.name}: {self.mountpoint} is not mounted")
        except ServiceError as exc:
            self._fail(str(exc))
        phases["mounted"] = round(time.monotonic() - t0, 2)
        self.state.update(ready=True, phases=phases,
                          start_seconds=round(time.monotonic() - t0, 2))
        self.save_state()
        return self

    def _volume_processes(self) -> dict[str, list[tuple[int, list[str]]]]:
        """Live brick and FUSE client processes of this instance."""
        return volume_processes(self.brick_dir, self.mountpoint)

    def _own_volume_processes(self, need: tuple[str, ...] = ()) -> None:
        """Record brick and FUSE client (own_pid) and the brick's socket in
        /var/run/gluster (own_path); ServiceError if a kind in need is missing."""
        found = self._volume_processes()
        known = {int(p) for p, _ in self._owned("owned_pids")}
        for kind, procs in found.items():
            for pid, argv in procs:
                if pid not in known:
                    self.own_pid(pid)
                if kind == "brick" and "-S" in argv[:-1]:
                    self.own_path(argv[argv.index("-S") + 1])
        missing = [kind for kind in need if not found[kind]]
        if missing:
            raise ServiceError(f"{self.name}: no {' or '.join(missing)} process running")

    def stop(self) -> None:
        """Unmount, stop and delete the volume (while glusterd runs), then kill what is
        left (glusterd, brick, FUSE client), remove owned paths and the work dir.
        Brick and client are looked for by argv too, in case a start died before
        recording them."""
        if self.workdir.is_dir():
            self._own_volume_processes()
        if self._mounted():
            try:
                mounts.umount(str(self.mountpoint))
            except (OSError, subprocess.SubprocessError) as exc:
                self._note(f"umount: {exc}")
        if self.is_running() and self._socket.is_socket():
            for args in (("volume", "stop", self.volume, "force"),
                         ("volume", "delete", self.volume)):
                try:
                    self._cli(*args, timeout=15.0)
                except ServiceError as exc:  # killed below anyway
                    self._note(str(exc))
        super().stop()

    # -- commands -------------------------------------------------------------------------
    def _cli(self, *args: str, timeout: float | None = None) -> str:
        return self._run([GLUSTER, "--mode=script", f"--glusterd-sock={self._socket}",
                          f"--log-file={self._log_dir() / 'cli.log'}", *args], timeout)

    def _run(self, argv: list[str], timeout: float | None = None) -> str:
        """Run a command (bounded), log it; ServiceError with its output."""
        self._note(f"+ {' '.join(argv)}")
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout or self.command_timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServiceError(f"{self.name}: {argv[0]}: {exc}") from exc
        self._note(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise ServiceError(f"{self.name}: exited {proc.returncode}: {' '.join(argv)}\n"
                               f"{(proc.stdout + proc.stderr).strip()[-2000:]}")
        return proc.stdout

    def _note(self, text: str) -> None:
        if text.strip() and self.workdir.is_dir():
            with open(self.log_file, "a") as log:
                log.write(text if text.endswith("\n") else text + "\n")

    def _fail(self, why: str) -> None:
        """Free everything (mount, volume processes), keep the dir and its logs, raise."""
        self._release_quietly()
        logs = [self.log_file, self._log_dir() / "glusterd.log", self._log_dir() / "fuse.log",
                *sorted((self._log_dir() / "bricks").glob("*.log"))]
        detail = "\n".join(f"--- {p}:\n{tail(p, 12)}" for p in logs if p.exists())
        raise ServiceError(f"lab service {self.name!r} {why}\n{detail}")

    def status(self) -> dict[str, Any]:
        return {**super().status(), "mounted": self._mounted()}
