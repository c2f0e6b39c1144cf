"""A real single-node Ceph cluster (Debian's pacific) on loopback: 1 mon + 1 memstore OSD.

It is the RBD side of the lab: Glance's rbd store writes into pool ``images``, Nova's
Rbd backend clones into pool ``vms``, and the handlers under test talk to it with the
real librados/librbd bindings.

    ceph = CephService().start()                    # ~2-3 s; reuses a healthy running one
    rados.Rados(conffile=ceph.conf_path, rados_id="admin")
    subprocess.run(["rbd", "ls", "images"], env={**os.environ, **ceph.env()})
    foreign = CephService(name="ceph2").start()     # a second cluster: other fsid, ports
    ceph.stop()                                     # SIGKILL both daemons, remove the dir

Layout of ``<run>/<name>/``: ``ceph.conf`` (daemons and clients; daemon-only settings
live in [mon]/[osd]), ``admin.keyring``, ``mon.a/``, ``osd.0/`` (memstore: the data is
in the OSD's RAM), ``mon.a.log``/``osd.0.log``, and ``<name>.log`` (daemon stdout and the
setup commands). Cephx is on, there is no mgr (``MGR_DOWN`` is muted, sticky).

Two daemons under one ``LabService``: the service's command is a small bash supervisor
(``supervise.sh``, the process-group leader) that runs the mon, then the OSD once told
(after ``ceph-osd --mkfs``, which needs the running mon), and kills and reaps the other
daemon when one exits. A process cannot join another session's process group, so the
OSD must be the supervisor's child. ``killpg`` reaches all three. Stopping sends SIGKILL
only (memstore dumps its whole store to disk on SIGTERM): to both daemons first (found
by process group and pid files), then to the group.
Sequence and settings: /work/shared/LAB-NOTES.md, "Ceph (real RBD, ~4 s cold start)".
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

from .service import (LOOPBACK, LabService, ServiceError, continue_processes, free_port,
                      group_members, port_open, stop_processes, tail)

CEPH_MON = "/usr/bin/ceph-mon"
CEPH_OSD = "/usr/bin/ceph-osd"
CEPH = "/usr/bin/ceph"
RBD = "/usr/bin/rbd"
RADOS = "/usr/bin/rados"
CEPH_AUTHTOOL = "/usr/bin/ceph-authtool"
MONMAPTOOL = "/usr/bin/monmaptool"
REQUIRED = (CEPH_MON, CEPH_OSD, CEPH, RBD, CEPH_AUTHTOOL, MONMAPTOOL)

MON_ID = "a"
OSD_ID = 0
DEFAULT_POOLS = ("images", "vms")
PG_NUM = 8
# Daemons let these override ceph.conf (osd.0 would then log in with the admin key).
CEPH_ENV_VARS = ("CEPH_CONF", "CEPH_KEYRING", "CEPH_ARGS")


# The service's foreground command: the process-group leader of one cluster. It starts
# the mon, waits for "osd" on the FIFO osd.go (written once `ceph-osd --mkfs` is done:
# that needs the running mon), starts the OSD in the same process group, and when
# either daemon exits kills and reaps the other (a half-dead cluster never "runs").
SUPERVISOR = """\
# Lab Ceph supervisor, written by tools/lab/ceph.py: bash supervise.sh WORKDIR MON OSD
set -u
W=$1 MON=$2 OSD=$3
unset CEPH_CONF CEPH_KEYRING CEPH_ARGS  # daemons let these override ceph.conf
exec 3<>"$W/osd.go"                     # read-write: opening never blocks
/usr/bin/ceph-mon -f -c "$W/ceph.conf" -i "$MON" &
mon=$!
while ! read -r -t 0.2 -u 3 go; do
    if ! kill -0 "$mon" 2>/dev/null; then
        wait "$mon"; echo "supervisor: ceph-mon exited with status $?"; exit 1
    fi
done
if [ "$go" != osd ]; then echo "supervisor: told '$go'"; kill -KILL 0; fi
/usr/bin/ceph-osd -f -c "$W/ceph.conf" -i "$OSD" &
osd=$!
wait -n "$mon" "$osd"
status=$?
if [ -e "$W/daemon-faults" ]; then
    # Fault trials (CephService(daemon_faults=True)) kill one daemon and start it
    # again themselves (start_daemon): keep the other running, reap it when it ends.
    echo "supervisor: a ceph daemon exited with status $status: daemon faults allowed"
    wait
    exit 0
fi
echo "supervisor: a ceph daemon exited with status $status: killing the cluster"
kill -KILL "$mon" "$osd" 2>/dev/null
wait  # reap both here: zombies left to init would still match `pgrep -f ceph-`
exit 1
"""


def _daemon_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CEPH_ENV_VARS}


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    """pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


class CephService(LabService):
    """One Ceph cluster: ``conf_path``, ``keyring_path``, ``fsid``, ``mon_host``, ``env()``."""

    name: ClassVar[str] = "ceph"  # per instance: CephService(name="ceph2")
    start_timeout: ClassVar[float] = 30.0   # bound on the whole start
    command_timeout: ClassVar[float] = 20.0  # bound on each setup command

    def __init__(self, name: str = "ceph", *, pools: tuple[str, ...] = DEFAULT_POOLS,
                 memstore_bytes: str = "8G", objectstore: str = "memstore",
                 daemon_faults: bool = False, run_dir: Path | None = None) -> None:
        """name: instance name = work dir ``<run>/<name>``; different names are separate
        clusters (own fsid, keys, free ports). pools: created with 8 PGs, size 1, and
        ``rbd pool init``. memstore_bytes: the OSD's reported capacity (RAM-backed).
        objectstore: "memstore" (RAM: an OSD killed loses its data) or "bluestore"
        (a sparse file ``osd.0.block`` in the work dir, ~10 s more to start: the data
        survives ``kill_daemon("osd")``). daemon_faults: a daemon that dies leaves
        the other running (else the supervisor kills the cluster), for
        ``kill_daemon``/``start_daemon``."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad lab service name {name!r}")
        if objectstore not in ("memstore", "bluestore"):
            raise ValueError(f"objectstore {objectstore!r}: memstore or bluestore")
        self.pools = tuple(pools)
        self.memstore_bytes = memstore_bytes
        self.objectstore = objectstore
        self.daemon_faults = daemon_faults
        self._restarted: list[subprocess.Popen[bytes]] = []
        self._booting = False
        self._t0 = time.monotonic()
        self._phases: dict[str, float] = {}
        self.last_stop_seconds: float | None = None
        super().__init__(run_dir, name=name)

    # -- where things are -------------------------------------------------------------
    def _need(self, key: str) -> Any:
        if key not in self.state:
            raise ServiceError(f"{self.name}: not started (no {key} in {self.state_file})")
        return self.state[key]

    @property
    def conf_path(self) -> Path:
        """ceph.conf for clients: mon host, fsid and ``[client] keyring`` (admin)."""
        return self.workdir / "ceph.conf"

    @property
    def keyring_path(self) -> Path:
        """client.admin's keyring."""
        return self.workdir / "admin.keyring"

    @property
    def fsid(self) -> str:
        return str(self._need("fsid"))

    @property
    def mon_host(self) -> str:
        """e.g. ``[v2:127.0.0.1:40001,v1:127.0.0.1:40002]`` (ceph.conf ``mon host``)."""
        return str(self._need("mon_host"))

    @property
    def mon_dir(self) -> Path:
        return self.workdir / f"mon.{MON_ID}"

    @property
    def osd_dir(self) -> Path:
        return self.workdir / f"osd.{OSD_ID}"

    def env(self) -> dict[str, str]:
        """Environment for the ``ceph``/``rbd``/``rados`` CLIs as client.admin."""
        return {"CEPH_CONF": str(self.conf_path), "CEPH_KEYRING": str(self.keyring_path),
                "CEPH_ARGS": "--id admin"}

    def shell_env(self) -> str:
        """Shell exports of env()."""
        return "".join(f"export {k}='{v}'\n" for k, v in self.env().items())

    def rbd_url(self, pool: str, image: str, snap: str = "snap") -> str:
        """Glance's location URL form for this cluster: rbd://fsid/pool/image/snap."""
        return f"rbd://{self.fsid}/{pool}/{image}/{snap}"

    # -- config -------------------------------------------------------------------------
    def _conf(self) -> str:
        w = self.workdir
        return f"""\
[global]
fsid = {self.state['fsid']}
mon host = {self.state['mon_host']}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = {PG_NUM}
osd pool default pgp num = {PG_NUM}
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0

[mon]
mon data = {w}/mon.$id
keyring = $mon_data/keyring
admin socket = {w}/$name.asok
pid file = {w}/$name.pid
log file = {w}/$name.log
paxos propose interval = 0.1
mon data avail warn = 1
mon data avail crit = 0

[osd]
osd data = {w}/osd.$id
keyring = $osd_data/keyring
admin socket = {w}/$name.asok
pid file = {w}/$name.pid
log file = {w}/$name.log
{self._store_conf()}
public addr = {LOOPBACK}
cluster addr = {LOOPBACK}

[client]
keyring = {self.keyring_path}
"""

    def _store_conf(self) -> str:
        if self.objectstore == "bluestore":
            # Small caches: the block file is sparse, the OSD's RAM stays ~1 GiB.
            return f"""osd objectstore = bluestore
bluestore block path = {self.workdir}/osd.$id.block
bluestore block create = true
bluestore block size = 10737418240
bluestore fsck on mount = false
bluestore cache autotune = false
bluestore cache size = 134217728
osd memory target = 939524096"""
        return f"""osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
memstore page set = true"""

    # -- subprocess helpers ------------------------------------------------------------------
    def _run(self, argv: list[str], *, client: bool = False, input: bytes | None = None,
             timeout: float | None = None, stderr_errors: bool = False) -> str:
        """Run a setup command (bounded); output goes to the log; raise with its tail.
        stderr_errors: also fail on "Error" lines (interactive `ceph` always exits 0)."""
        env = dict(_daemon_env(), **self.env()) if client else _daemon_env()
        timeout = timeout or self.command_timeout
        with open(self.log_file, "ab") as log:
            log.write(f"+ {' '.join(argv)}\n".encode())
        try:
            proc = subprocess.Popen(argv, cwd=self.workdir, env=env,
                                    stdin=subprocess.PIPE if input is not None
                                    else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            self._fail(f"cannot run {argv[0]}: {exc}")
        deadline = time.monotonic() + timeout
        why = ""
        while True:
            try:
                stdout, stderr = proc.communicate(input, timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                input = None  # already sent
                if time.monotonic() > deadline:
                    why = f"timed out after {timeout:.1f} s"
                elif self._proc is not None and self._proc.poll() is not None:
                    why = f"cluster died (supervisor exit {self._proc.returncode})"
                else:
                    continue
                proc.kill()
                stdout, stderr = proc.communicate()
                break
        out = stdout + stderr
        self._log(out)
        if why:
            self._fail(f"{why} in: {' '.join(argv)}")
        errors = [line for line in stderr.decode("utf-8", "replace").splitlines()
                  if line.startswith("Error")] if stderr_errors else []
        if proc.returncode != 0 or errors:
            self._fail(f"exited {proc.returncode}: {' '.join(argv)}\n"
                       f"{out.decode('utf-8', 'replace').strip()[-2000:]}")
        return stdout.decode("utf-8", "replace")

    def _log(self, data: bytes) -> None:
        if data:
            with open(self.log_file, "ab") as log:
                log.write(data if data.endswith(b"\n") else data + b"\n")

    def _fail(self, why: str) -> None:
        """Kill what was spawned, keep the work dir, raise with the daemon logs' tails."""
        self._kill()
        logs = [self.log_file, self.workdir / f"mon.{MON_ID}.log",
                self.workdir / f"osd.{OSD_ID}.log"]
        detail = "\n".join(f"--- {p}:\n{tail(p, 15)}" for p in logs if p.exists())
        raise ServiceError(f"lab service {self.name!r} {why}\n{detail}")

    # -- LabService hooks ---------------------------------------------------------------------
    def prepare(self) -> None:
        missing = [p for p in REQUIRED if not Path(p).exists()]
        if missing:
            raise ServiceError(f"{self.name}: {', '.join(missing)} missing: run "
                               "tools/install-deps.sh (ceph-mon ceph-osd ceph-common)")
        v2 = free_port()
        v1 = free_port()
        while v1 == v2:
            v1 = free_port()
        self.state.update(
            fsid=str(uuid.uuid4()), osd_uuid=str(uuid.uuid4()), mon_port_v2=v2,
            mon_port_v1=v1, mon_host=f"[v2:{LOOPBACK}:{v2},v1:{LOOPBACK}:{v1}]",
            endpoint=f"[v2:{LOOPBACK}:{v2},v1:{LOOPBACK}:{v1}]", ready=False)
        self.save_state()
        self.conf_path.write_text(self._conf())
        self.osd_dir.mkdir()
        w = self.workdir
        mon_kr, osd_kr = w / "mon.keyring", self.osd_dir / "keyring"
        tool = CEPH_AUTHTOOL
        self._run([tool, "--create-keyring", str(mon_kr), "--gen-key", "-n", "mon.",
                   "--cap", "mon", "allow *"])
        self._run([tool, "--create-keyring", str(self.keyring_path), "--gen-key",
                   "-n", "client.admin", "--cap", "mon", "allow *", "--cap", "osd",
                   "allow *", "--cap", "mgr", "allow *", "--cap", "mds", "allow *"])
        self._run([tool, "--create-keyring", str(osd_kr), "--gen-key", "-n",
                   f"osd.{OSD_ID}", "--cap", "mon", "allow profile osd", "--cap", "mgr",
                   "allow profile osd", "--cap", "osd", "allow *"])
        # The mon is created from one keyring holding every key it must know.
        self._run([tool, str(mon_kr), "--import-keyring", str(self.keyring_path)])
        self._run([tool, str(mon_kr), "--import-keyring", str(osd_kr)])
        self._run([MONMAPTOOL, "--create", "--fsid", self.state["fsid"], "--addv", MON_ID,
                   self.state["mon_host"], str(w / "monmap")])
        self._run([CEPH_MON, "-c", str(self.conf_path), "--mkfs", "-i", MON_ID,
                   "--monmap", str(w / "monmap"), "--keyring", str(mon_kr)])
        mon_kr.unlink()
        (w / "monmap").unlink()
        self._mark("prepared")

    def command(self) -> list[str]:
        (self.workdir / "osd.go").unlink(missing_ok=True)
        os.mkfifo(self.workdir / "osd.go")
        script = self.workdir / "supervise.sh"
        script.write_text(SUPERVISOR)
        flag = self.workdir / "daemon-faults"
        if self.daemon_faults:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)
        return ["/bin/bash", str(script), str(self.workdir), MON_ID, str(OSD_ID)]

    def is_healthy(self) -> bool:
        """While booting: the mon listens. Else: setup finished, mon and OSD alive."""
        if not self.state.get("mon_port_v2"):
            return False
        if not port_open(LOOPBACK, int(self.state["mon_port_v2"])):
            return False
        if self._booting:
            return True
        return bool(self.state.get("ready")) and self.daemon_pid("osd") is not None

    # -- processes ------------------------------------------------------------------------------
    def _ours(self, pid: int) -> bool:
        """pid is one of this instance's processes (its argv names our work dir)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self.workdir).encode() in cmdline

    def _pgid(self) -> int | None:
        """The supervisor's pid = process group id (even if the leader itself is gone)."""
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return self._proc.pid if self._proc else None

    def _members(self) -> list[int]:
        """Live processes of this instance: its process group plus the daemons' pid files."""
        pids = set()
        pgid = self._pgid()
        if pgid:
            pids.update(p for p in group_members(pgid) if self._ours(p))
        for daemon in (f"mon.{MON_ID}", f"osd.{OSD_ID}"):
            try:
                pid = int((self.workdir / f"{daemon}.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if self._ours(pid) and _alive(pid):
                pids.add(pid)
        return sorted(pids)

    def daemon_pid(self, kind: str) -> int | None:
        """Pid of the running ``mon`` or ``osd`` daemon of this instance, or None."""
        exe = {"mon": CEPH_MON, "osd": CEPH_OSD}[kind]
        return next((pid for pid in self._members() if _exe(pid) == exe), None)

    def is_running(self) -> bool:
        return bool(self._members())

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "CephService":
        """Start the cluster (or reuse a healthy running one); ServiceError on failure."""
        if self.is_running():
            self.state = self._load_state()
            if self.is_healthy():
                self.reused = True
                return self
        self.stop()  # half-started or dead leftovers: kill them, wipe the dir
        self._t0 = time.monotonic()
        self._phases: dict[str, float] = {}
        self._booting = True
        try:
            super().start()  # prepare(), supervisor + mon, wait until the mon listens
        finally:
            self._booting = False
        self._mark("mon_listening")
        self._bring_up_osd(self._t0 + self.start_timeout)
        self._mark("pools_ready")
        self.state["phases"] = self._phases
        self.state["ready"] = True
        self.state["start_seconds"] = round(time.monotonic() - self._t0, 2)
        self.save_state()
        return self

    def _mark(self, phase: str) -> None:
        """Record seconds since start began (state["phases"]: where start time goes)."""
        self._phases[phase] = round(time.monotonic() - self._t0, 2)

    def _bring_up_osd(self, deadline: float) -> None:
        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(f"not up after {self.start_timeout:.0f} s")
            return min(remaining, self.command_timeout)

        conf = ["-c", str(self.conf_path)]
        ceph = [CEPH, *conf, "--connect-timeout", "10"]
        osd_uuid, osd = self.state["osd_uuid"], str(OSD_ID)
        self._run([*ceph, "osd", "new", osd_uuid, osd], client=True, timeout=left())
        self._mark("osd_new")
        self._run([CEPH_OSD, *conf, "--mkfs", "-i", osd, "--osd-uuid", osd_uuid],
                  timeout=left())
        self._mark("osd_mkfs")
        self._tell_supervisor("osd")
        # Mon-only commands need no OSD: one `ceph` process reads them from stdin.
        script = ["health mute MGR_DOWN --sticky"]
        script += [f"osd pool create {p} {PG_NUM} {PG_NUM}" for p in self.pools]
        self._run(ceph, client=True, input=("\n".join(script) + "\n").encode(),
                  timeout=left(), stderr_errors=True)
        self._mark("pools_created")
        # `rbd pool init` writes to the pool: it returns once the OSD is up and PGs active.
        for pool in self.pools:
            self._run([RBD, *conf, "pool", "init", pool], client=True, timeout=left())
        if self.daemon_pid("osd") is None:
            self._fail("ceph-osd is not running")

    def _tell_supervisor(self, word: str) -> None:
        """Write a line to the supervisor's FIFO (it holds it open: this never blocks)."""
        try:
            fd = os.open(self.workdir / "osd.go", os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: no reader, the supervisor is gone
            self._fail(f"supervisor not listening on osd.go: {exc}")
        try:
            os.write(fd, f"{word}\n".encode())
        finally:
            os.close(fd)

    def _kill(self) -> None:
        """SIGKILL (never SIGTERM: memstore would dump RAM to disk) this instance's
        processes; wait (bounded) until they are gone and reaped.

        The daemons go first, so the supervisor reaps them (it then exits); then the
        whole process group. Killing the group at once would orphan the daemons' zombies
        to init, which reaps slowly here (~1.5 s), and `pgrep -f ceph-` lists them."""
        pgid = self._pgid()
        seen = set(self._members())
        daemons = {p for p in seen if _exe(p) in (CEPH_MON, CEPH_OSD)}
        self._signal(daemons)
        self._wait_gone(daemons, 2.0)
        if self._proc is not None:
            seen.add(self._proc.pid)
        pids = {p for p in seen if _alive(p)} | set(self._members())
        deadline = time.monotonic() + self.stop_timeout
        while pids:
            if pgid and any(self._ours(p) for p in group_members(pgid)):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._signal(pids)
            self._reap()
            pids = {p for p in pids if _alive(p)} | set(self._members())
            daemons |= {p for p in pids if _exe(p) in (CEPH_MON, CEPH_OSD)}
            if pids and time.monotonic() > deadline:
                raise ServiceError(f"{self.name}: pids {sorted(pids)} survived SIGKILL")
            time.sleep(0.01)
        # Daemons whose supervisor died first are init's children, and init reaps
        # slowly here: wait (bounded). The supervisor's own zombie (an exited CLI
        # started it) is a harmless "bash" entry: not waited for.
        self._wait_gone(daemons, 5.0)

    def _signal(self, pids: set[int]) -> None:
        for pid in pids:
            if self._ours(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _reap(self) -> None:
        super()._reap()
        for proc in self._restarted:  # daemons start_daemon ran
            proc.poll()

    def _wait_gone(self, pids: set[int], timeout: float) -> None:
        """Wait until the pids have no /proc entry (dead and reaped), at most timeout."""
        deadline = time.monotonic() + timeout
        while any(Path(f"/proc/{p}").exists() for p in pids):
            self._reap()
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)

    def stop(self) -> None:
        """SIGKILL both daemons, wait for them, remove the work dir (memstore included)."""
        t0 = time.monotonic()
        self._kill()
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self._proc = None
        self._restarted = []
        self.state = {}
        self.last_stop_seconds = round(time.monotonic() - t0, 3)

    # -- faults (daemon_faults=True) ---------------------------------------------------------
    def kill_daemon(self, kind: str) -> int:
        """SIGKILL the ``mon`` or the ``osd``, as a crash would; returns its pid. The
        other daemon keeps running (only with daemon_faults: else the supervisor
        ends the cluster). With memstore a killed OSD's data is gone: use bluestore."""
        if not self.daemon_faults:
            raise ServiceError(f"{self.name}: started without daemon_faults=True")
        pid = self.daemon_pid(kind)
        if pid is None:
            raise ServiceError(f"{self.name}: no {kind} running")
        self._signal({pid})
        self._wait_gone({pid}, 5.0)
        if _alive(pid):
            raise ServiceError(f"{self.name}: {kind} {pid} survived SIGKILL")
        return pid

    def pause_daemon(self, kind: str) -> list[int]:
        """SIGSTOP the ``mon`` or the ``osd`` (a hung daemon: its sockets stay open
        and nothing answers); returns its pid in a list for ``resume_daemon``."""
        pid = self.daemon_pid(kind)
        if pid is None:
            raise ServiceError(f"{self.name}: no {kind} running")
        return stop_processes([pid], f"{self.name} {kind}")

    def resume_daemon(self, pids: list[int]) -> None:
        """SIGCONT what ``pause_daemon`` stopped."""
        continue_processes([p for p in pids if self._ours(p)])

    def start_daemon(self, kind: str, timeout: float = 60.0) -> float:
        """Start the ``mon`` or ``osd`` again on its data (outside the supervisor's
        process group: stop() finds it by its pid file) and wait until it serves: the
        mon answers ``ceph status``, the OSD answers a read in every pool. Returns the
        seconds that took."""
        if self.daemon_pid(kind) is not None:
            raise ServiceError(f"{self.name}: {kind} is already running")
        t0 = time.monotonic()
        exe, ident = (CEPH_MON, MON_ID) if kind == "mon" else (CEPH_OSD, str(OSD_ID))
        argv = [exe, "-f", "-c", str(self.conf_path), "-i", ident]
        with open(self.log_file, "ab") as log:
            log.write(f"+ {' '.join(argv)}  (start_daemon)\n".encode())
            log.flush()
            self._restarted.append(subprocess.Popen(
                argv, cwd=self.workdir, env=_daemon_env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        self._wait_serving(kind, t0, timeout, self._restarted[-1], "start_daemon")
        return round(time.monotonic() - t0, 2)

    def wait_serving(self, kind: str, timeout: float = 60.0) -> float:
        """Wait until the running ``mon`` or ``osd`` serves (as start_daemon does),
        e.g. after ``resume_daemon``; returns the seconds that took."""
        t0 = time.monotonic()
        self._wait_serving(kind, t0, timeout, None, "resume")
        return round(time.monotonic() - t0, 2)

    def _wait_serving(self, kind: str, t0: float, timeout: float,
                      proc: subprocess.Popen | None, after: str) -> None:
        """The mon answers ``ceph status``, the OSD a read in every pool."""
        conf = ["-c", str(self.conf_path)]
        if kind == "mon":
            probes = [[CEPH, *conf, "--connect-timeout", "5", "status"]]
        else:
            probes = [[RADOS, *conf, "--rados-osd-op-timeout", "3", "-p", pool, "stat",
                       "image-handlers-lab-probe"] for pool in self.pools]
        deadline = t0 + timeout
        for probe in probes:
            while True:
                done = subprocess.run(probe, env=dict(_daemon_env(), **self.env()),
                                      capture_output=True, timeout=timeout)
                # stat of a missing object answers ENOENT (exit 2): the OSD served it.
                if done.returncode == 0 or (kind == "osd" and b"No such file" in done.stderr):
                    break
                if proc is not None and proc.poll() is not None:
                    self._fail(f"{kind} exited ({proc.returncode}) after {after}")
                if time.monotonic() > deadline:
                    self._fail(f"{kind} not serving {timeout:.0f} s after {after}")
                time.sleep(0.1)

    def osd_rss_kib(self) -> int | None:
        """Resident memory of the OSD (memstore keeps the data there), or None."""
        pid = self.daemon_pid("osd")
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (OSError, TypeError):
            pass
        return None

    def status(self) -> dict[str, Any]:
        return {**super().status(), "mon_pid": self.daemon_pid("mon"),
                "osd_pid": self.daemon_pid("osd"), "conf": str(self.conf_path)}
