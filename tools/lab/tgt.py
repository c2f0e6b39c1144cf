"""A real iSCSI target (Debian's tgt 1.0.85, the userspace target) on 127.0.0.1.

The iscsi_cor handler's source of LUNs: an image file is exported read-only as LUN 1
of its own target, and qemu's userspace initiator (libiscsi, qemu-block-extra) reads
it: ``qemu-img info iscsi://127.0.0.1:PORT/IQN/1``, a qcow2 overlay backed by that URL,
copy-on-read. The kernel initiator cannot work here (no iscsi_tcp module).

    tgt = TgtService().start()                       # ~0.1 s; reuses a healthy one
    exp = tgt.export("cirros", "/path/cirros.raw")   # read-only LUN 1, 127.0.0.1 only
    exp.url                                          # iscsi://127.0.0.1:PORT/iqn.../1
    tgt.sessions("cirros")                           # I_T nexuses of that target
    tgt.unexport("cirros")
    tgt.kill(); tgt.restart()                        # crash, then back the same
    tgt.stop()                                       # no tgtd, no socket files left

tgtd runs in the foreground (``tgtd -f``) with its own iSCSI portal
(``--iscsi portal=127.0.0.1:PORT``, a free port) and its own control port (``-C N``):
the control port only names the management socket ``/run/tgtd/socket.N`` (plus
``socket.N.lock``, which tgtd locks), and every tgtadm call here passes ``-C N``, so
this instance never talks to a system tgtd (N=0) or to another lab's. N is a short
(<= 32767) picked where no socket.N/socket.N.lock exists.

Per export: a target ``iqn.2026-12.lab.image-handlers:<name>`` with LUN 1 (backing
store ``rdwr`` on the regular file), then ``--op update --mode logicalunit --params
readonly=1,scsi_id=...,scsi_sn=...`` (tgtadm refuses --params on ``--op new``), bound
to the initiator address 127.0.0.1 (or ALL), optional CHAP (an incoming account bound
to the target). The LUN's identity is stable: the unit serial number (VPD 0x80) is
``serial`` (default: 24 hex digits derived from the name; a Glance image id fits), and
the T10 vendor-id designator of VPD 0x83 carries the same string (tgt's ``scsi_id``).
tgt also derives two NAA designators (one from tid and lun, one from the hex digits of
scsi_id), which is why restart() reuses each tid.

Exports are recorded in state.json (tid, backing file, identity, CHAP user; the CHAP
password in a 0600 file ``chap/<name>.secret`` in the work dir, usable as qemu's
``--object secret,id=s0,file=...``), so restart() re-creates the same targets, LUNs,
identities and portal port after kill(), also from another process.

stop(): ``tgtadm --op delete --mode target --force`` for every target, then ``tgtadm
--op delete --mode system`` (tgtd exits once no target is left), SIGKILL only if it
does not; SIGTERM alone does NOT stop tgtd. tgtd leaves its socket files behind: they
are removed, and /run/tgtd too when it was created by this instance and is empty.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .service import (LOOPBACK, LabService, ServiceError, free_port, group_members,
                      port_open, state_port)

TGTD = "/usr/sbin/tgtd"
TGTADM = "/usr/sbin/tgtadm"
IPC_DIR = Path("/run/tgtd")          # tgtd's TGT_IPC_NAMESPACE is /var/run/tgtd/socket
IQN_PREFIX = "iqn.2026-12.lab.image-handlers:"
LUN = 1
BLOCK = 512                          # tgt's block size: a LUN is the file's size // 512
CONTROL_PORTS = (10000, 32767)       # tgtd keeps the control port in a short
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
# scsi_sn and scsi_id: <= 36 chars (tgt silently truncates longer ones), no ',' or '='
# (tgtadm's param separators) and no spaces.
SERIAL_RE = re.compile(r"^[A-Za-z0-9._:-]{1,36}$")
CHAP_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,255}$")
INITIATOR_ADDRESSES = ("127.0.0.1", "ALL")


@dataclass(frozen=True)
class Export:
    """One exported file: LUN ``lun`` of target ``iqn`` on ``portal``."""

    name: str
    iqn: str
    lun: int
    portal: str                 # 127.0.0.1:PORT
    size: int                   # bytes the LUN has (the file's size, a multiple of 512)
    backing_file: str
    readonly: bool
    serial: str                 # VPD 0x80 unit serial number
    scsi_id: str                # VPD 0x83 T10 vendor-id designator
    tid: int
    chap_user: str | None = None
    secret_file: str | None = None  # the CHAP password alone, mode 0600

    @property
    def url(self) -> str:
        """``iscsi://127.0.0.1:PORT/IQN/1`` (no credentials: never put them in a URL,
        ps and /proc/PID/cmdline would show them)."""
        return f"iscsi://{self.portal}/{self.iqn}/{self.lun}"

    def image_opts(self, secret_id: str = "s0") -> str:
        """qemu ``--image-opts`` for the LUN; with CHAP, ``user=`` and
        ``password-secret=<secret_id>`` (pair it with ``secret_object()``)."""
        opts = (f"driver=iscsi,transport=tcp,portal={self.portal},target={self.iqn},"
                f"lun={self.lun}")
        if self.chap_user:
            opts += f",user={self.chap_user},password-secret={secret_id}"
        return opts

    def secret_object(self, secret_id: str = "s0") -> str:
        """qemu ``--object`` reading the CHAP password from secret_file."""
        if not self.secret_file:
            raise ValueError(f"export {self.name!r} has no CHAP account")
        return f"secret,id={secret_id},file={self.secret_file}"


class TgtService(LabService):
    """tgtd on ``portal`` (127.0.0.1:PORT) with a private control port."""

    name: ClassVar[str] = "tgt"
    start_timeout: ClassVar[float] = 15.0
    stop_timeout: ClassVar[float] = 2.0      # SIGTERM is ignored by tgtd: short wait
    command_timeout: ClassVar[float] = 15.0  # bound on each tgtadm call

    def __init__(self, name: str = "tgt", *, run_dir: Path | None = None) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad lab service name {name!r}")
        super().__init__(run_dir, name=name)

    # -- where things are -------------------------------------------------------------
    port = property(state_port)

    @property
    def control_port(self) -> int:
        if "control_port" not in self.state:
            raise ServiceError(f"{self.name}: not started (no control port in state)")
        return int(self.state["control_port"])

    @property
    def portal(self) -> str:
        """``127.0.0.1:PORT``: the iSCSI portal (loopback only)."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def socket_path(self) -> Path:
        return IPC_DIR / f"socket.{self.control_port}"

    def _socket_files(self) -> list[Path]:
        n = self.state.get("control_port")
        if n is None:
            return []
        return [IPC_DIR / f"socket.{n}", IPC_DIR / f"socket.{n}.lock"]

    # -- LabService hooks ---------------------------------------------------------------
    def prepare(self) -> None:
        missing = [p for p in (TGTD, TGTADM) if not Path(p).exists()]
        if missing:
            raise ServiceError(f"{self.name}: {', '.join(missing)} missing: run "
                               "tools/install-deps.sh (tgt)")
        created_ipc_dir = not IPC_DIR.exists()
        IPC_DIR.mkdir(parents=True, exist_ok=True)
        (self.workdir / "chap").mkdir(mode=0o700)
        self.state.update(port=free_port(), control_port=self._pick_control_port(),
                          created_ipc_dir=created_ipc_dir, exports={})
        self.save_state()

    @staticmethod
    def _pick_control_port() -> int:
        """A control port no tgtd uses: neither socket.N nor socket.N.lock exists (a
        running tgtd always has both; a racing one makes our tgtd fail to start)."""
        rng = random.SystemRandom()
        for _ in range(1000):
            n = rng.randint(*CONTROL_PORTS)
            if not any((IPC_DIR / f"socket.{n}{s}").exists() for s in ("", ".lock")):
                return n
        raise ServiceError("tgt: no free tgtd control port")

    def command(self) -> list[str]:
        return [TGTD, "-f", "-C", str(self.control_port),
                "--iscsi", f"portal={self.portal}"]

    def is_healthy(self) -> bool:
        """The management socket answers and the portal accepts connections."""
        if "port" not in self.state or not self.socket_path.is_socket():
            return False
        try:
            self._adm("--op", "show", "--mode", "system", timeout=3.0, log=False)
        except ServiceError:
            return False
        return port_open(LOOPBACK, self.port)

    # -- exports --------------------------------------------------------------------------
    def exports(self) -> dict[str, Export]:
        """Recorded exports by name (also those made by another process)."""
        self.state = self._load_state() or self.state
        return {name: self._export_of(name, rec)
                for name, rec in self.state.get("exports", {}).items()}

    def _export_of(self, name: str, rec: dict[str, Any]) -> Export:
        return Export(name=name, iqn=rec["iqn"], lun=LUN, portal=self.portal,
                      size=rec["size"], backing_file=rec["backing_file"],
                      readonly=rec["readonly"], serial=rec["serial"],
                      scsi_id=rec["scsi_id"], tid=rec["tid"],
                      chap_user=rec.get("chap_user"), secret_file=rec.get("secret_file"))

    def export(self, name: str, backing_file: Path | str, *, readonly: bool = True,
               chap: tuple[str, str] | None = None, serial: str | None = None,
               initiator_address: str = LOOPBACK) -> Export:
        """Export backing_file (a regular file, size a positive multiple of 512) as
        LUN 1 of target ``iqn.2026-12.lab.image-handlers:<name>``.

        readonly: the LUN reports write protection (qemu refuses a read-write open;
        writes fail). chap: (user, password) of an incoming CHAP account bound to the
        target. serial: the LUN's identity, as unit serial number (VPD 0x80) and T10
        designator (VPD 0x83), <= 36 chars of [A-Za-z0-9._:-] (a UUID fits); default
        derived from name. initiator_address: the ACL,
        127.0.0.1 (default) or ALL. An existing export of that name is replaced."""
        if not NAME_RE.match(name):
            raise ValueError(f"bad export name {name!r} (want [a-z0-9][a-z0-9.-]*, <= 63)")
        self.state = self._load_state() or self.state
        if initiator_address not in INITIATOR_ADDRESSES:
            raise ValueError(f"initiator_address must be one of {INITIATOR_ADDRESSES}")
        path = Path(backing_file).resolve()
        if "," in str(path):
            raise ValueError(f"tgtadm cannot take a path with a comma: {path}")
        if not path.is_file():
            raise ValueError(f"not a regular file: {path}")
        size = path.stat().st_size
        if size <= 0 or size % BLOCK:
            raise ValueError(f"{path}: size {size} is not a positive multiple of {BLOCK} "
                             "(tgt would silently drop the tail)")
        serial = serial or hashlib.sha256(name.encode()).hexdigest()[:24]
        if not SERIAL_RE.match(serial):
            raise ValueError(f"bad serial {serial!r} (<= 36 chars of [A-Za-z0-9._:-])")
        if chap is not None:
            user, password = chap
            if not CHAP_RE.match(user) or not CHAP_RE.match(password):
                raise ValueError("CHAP user and password: 1-255 chars of [A-Za-z0-9._:@-]")
            for other, rec in self.exports().items():
                if other != name and rec.chap_user == user:
                    raise ValueError(f"CHAP user {user!r} is already used by {other!r}")
        if name in self.state.get("exports", {}):
            self.unexport(name)
        used = {rec["tid"] for rec in self.state.get("exports", {}).values()}
        tid = min(set(range(1, len(used) + 2)) - used)
        rec: dict[str, Any] = {
            "iqn": IQN_PREFIX + name, "tid": tid, "backing_file": str(path), "size": size,
            "readonly": readonly, "serial": serial, "scsi_id": serial,
            "initiator_address": initiator_address}
        if chap is not None:
            secret = self.workdir / "chap" / f"{name}.secret"
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(chap[1])  # no newline: qemu's secret file is the raw password
            rec.update(chap_user=chap[0], secret_file=str(secret))
        self.state.setdefault("exports", {})[name] = rec  # recorded first: stop() frees it
        self.save_state()
        self._create(name, rec, forget_on_failure=True)
        return self._export_of(name, rec)

    def _create(self, name: str, rec: dict[str, Any], *, forget_on_failure: bool) -> None:
        """The tgtadm calls that make one export (also used by restart(), which keeps
        the record when they fail)."""
        tid = str(rec["tid"])
        try:
            self._adm("--op", "new", "--mode", "target", "--tid", tid,
                      "--targetname", rec["iqn"])
            self._adm("--op", "new", "--mode", "logicalunit", "--tid", tid, "--lun",
                      str(LUN), "--backing-store", rec["backing_file"], "--bstype", "rdwr")
            params = f"scsi_id={rec['scsi_id']},scsi_sn={rec['serial']}"
            if rec["readonly"]:
                params = "readonly=1," + params
            self._adm("--op", "update", "--mode", "logicalunit", "--tid", tid, "--lun",
                      str(LUN), "--params", params)
            if rec.get("chap_user"):
                password = Path(rec["secret_file"]).read_text()
                self._adm("--op", "new", "--mode", "account", "--user", rec["chap_user"],
                          "--password", password, log=False)
                self._adm("--op", "bind", "--mode", "account", "--tid", tid,
                          "--user", rec["chap_user"])
            # the ACL last: no initiator can log in before the LUN is read-only
            self._adm("--op", "bind", "--mode", "target", "--tid", tid,
                      "--initiator-address", rec["initiator_address"])
        except ServiceError:
            self._delete(rec, quiet=True)
            if forget_on_failure:
                self.state["exports"].pop(name, None)
                self.save_state()
                if rec.get("secret_file"):
                    Path(rec["secret_file"]).unlink(missing_ok=True)
            raise

    def unexport(self, name: str) -> None:
        """Delete the target (with --force: live sessions are dropped), its CHAP
        account and secret file."""
        self.state = self._load_state() or self.state
        rec = self.state.get("exports", {}).get(name)
        if rec is None:
            raise ServiceError(f"{self.name}: no export named {name!r}")
        self._delete(rec)
        self.state["exports"].pop(name)
        self.save_state()
        if rec.get("secret_file"):
            Path(rec["secret_file"]).unlink(missing_ok=True)

    def _delete(self, rec: dict[str, Any], quiet: bool = False) -> None:
        calls = [("--op", "delete", "--mode", "target", "--force", "--tid", str(rec["tid"]))]
        if rec.get("chap_user"):
            calls.append(("--op", "delete", "--mode", "account", "--user", rec["chap_user"]))
        for args in calls:
            try:
                self._adm(*args)
            except ServiceError:
                if not quiet and args[3] == "target":
                    raise

    def sessions(self, name: str) -> list[dict[str, Any]]:
        """The target's I_T nexuses (logged-in sessions), from ``tgtadm --op show
        --mode target``: ``[{"nexus": 12, "initiator": "iqn.2008-11.org.linux-kvm",
        "alias": None, "connections": [{"cid": 0, "address": "127.0.0.1"}]}]``."""
        rec = self.exports().get(name)
        if rec is None:
            raise ServiceError(f"{self.name}: no export named {name!r}")
        targets = parse_show(self._adm("--op", "show", "--mode", "target", log=False))
        if rec.tid not in targets or targets[rec.tid]["iqn"] != rec.iqn:
            raise ServiceError(f"{self.name}: target {rec.tid} {rec.iqn} is not in tgtd")
        return targets[rec.tid]["sessions"]

    # -- faults ---------------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL tgtd, as a crash would: targets, sessions and the portal vanish; the
        socket files and state.json (exports) stay. restart() brings it all back."""
        pid = self.pid()
        if pid is None:
            raise ServiceError(f"{self.name}: not running")
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5.0
        while (group_members(pid) or Path(f"/proc/{pid}").exists()) and \
                time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        if group_members(pid):
            raise ServiceError(f"{self.name}: tgtd {pid} survived SIGKILL")

    def restart(self) -> "TgtService":
        """Start tgtd again on the same portal port and control port and re-create
        every recorded export (same tid, LUN, identity, CHAP account, ACL). A running
        tgtd is killed first."""
        self.state = self._load_state() or self.state
        if "port" not in self.state:
            raise ServiceError(f"{self.name}: never started (no state): use start()")
        if self.pid() is not None:
            self.kill()
        if port_open(LOOPBACK, self.port):
            raise ServiceError(f"{self.name}: portal port {self.port} was taken meanwhile")
        t0 = time.monotonic()
        self._spawn(self.command(), t0)
        exports = self.state.get("exports", {})
        for name, rec in sorted(exports.items(), key=lambda item: item[1]["tid"]):
            self._create(name, rec, forget_on_failure=False)
        self.state["restart_seconds"] = round(time.monotonic() - t0, 2)
        self.save_state()
        return self

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "TgtService":
        """Start tgtd (or reuse a healthy one); then record its socket files, which it
        leaves behind, for stop(). Only once it is healthy: a tgtd that lost a race for
        the control port must not make stop() remove the winner's socket."""
        super().start()
        for path in self._socket_files():
            self.own_path(path)
        return self

    def stop(self) -> None:
        """Delete every target, ask tgtd to exit (``--op delete --mode system``), kill
        it if it does not, remove the socket files, the work dir (and /run/tgtd if this
        instance created it and it is empty)."""
        self.state = self._load_state() or self.state
        pid = self.pid()
        if pid is not None and self._socket_files() and self._socket_files()[0].is_socket():
            try:
                targets = parse_show(self._adm("--op", "show", "--mode", "target",
                                               timeout=5.0))
                for tid in targets:
                    self._adm("--op", "delete", "--mode", "target", "--force",
                              "--tid", str(tid), timeout=5.0)
                self._adm("--op", "delete", "--mode", "system", timeout=5.0)
                deadline = time.monotonic() + 5.0
                while group_members(pid) and time.monotonic() < deadline:
                    self._reap()
                    time.sleep(0.02)
            except ServiceError as exc:  # killed by super().stop() anyway
                self._note(f"clean stop failed: {exc}")
        created_ipc_dir = bool(self.state.get("created_ipc_dir"))
        super().stop()  # kills tgtd if still there; removes the owned socket files
        if created_ipc_dir:
            try:
                IPC_DIR.rmdir()  # only when empty: another tgtd may use it by now
            except OSError:
                pass

    def _reap(self) -> None:
        """Also reap a tgtd that another TgtService object of this process spawned
        (restart() from a fresh object, stop() from the first): else it stays a
        zombie of ours and stop() waits for init to reap it."""
        super()._reap()
        pid = self.pid()
        if pid is not None:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child: init reaps it
                pass

    def status(self) -> dict[str, Any]:
        return {**super().status(), "portal": self.portal if "port" in self.state else None}

    # -- commands -------------------------------------------------------------------------
    def _adm(self, *args: str, timeout: float | None = None, log: bool = True) -> str:
        """tgtadm -C <our control port> --lld iscsi ARGS (bounded); ServiceError with
        its output. log=False keeps the call (a CHAP password) out of the log."""
        argv = [TGTADM, "-C", str(self.control_port), "--lld", "iscsi", *args]
        if log:
            self._note(f"+ {' '.join(argv)}")
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout or self.command_timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServiceError(f"{self.name}: tgtadm {' '.join(args[:4])}: {exc}") from exc
        if proc.returncode != 0:
            shown = [("***" if i and args[i - 1] == "--password" else a)
                     for i, a in enumerate(args)]
            raise ServiceError(f"{self.name}: tgtadm exited {proc.returncode}: "
                               f"{' '.join(shown)[:300]}: "
                               f"{(proc.stdout + proc.stderr).strip()[-1000:]}")
        return proc.stdout

    def _note(self, text: str) -> None:
        if text.strip() and self.workdir.is_dir():
            with open(self.log_file, "a") as log:
                log.write(text if text.endswith("\n") else text + "\n")


def parse_show(text: str) -> dict[int, dict[str, Any]]:
    """``tgtadm --op show --mode target`` output -> {tid: {"iqn", "sessions", "luns"}};
    sessions as in TgtService.sessions(), luns {lun: {"scsi_id", "scsi_sn", "readonly",
    "path"}}."""
    targets: dict[int, dict[str, Any]] = {}
    cur: dict[str, Any] | None = None
    section = ""
    nexus: dict[str, Any] | None = None
    lun: dict[str, Any] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        m = re.match(r"^Target (\d+): (\S+)$", raw)
        if m:
            cur = {"iqn": m.group(2), "sessions": [], "luns": {}}
            targets[int(m.group(1))] = cur
            section, nexus, lun = "", None, None
            continue
        if cur is None or not line:
            continue
        if line.endswith(":") and not raw.startswith(" " * 8):  # a section header
            section = line[:-1]
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if section == "I_T nexus information":
            if key == "I_T nexus":
                nexus = {"nexus": int(value), "initiator": None, "alias": None,
                         "connections": []}
                cur["sessions"].append(nexus)
            elif key == "Initiator" and nexus is not None:
                m = re.match(r"^(\S+)(?: alias: (.*))?$", value)
                if m:
                    nexus["initiator"] = m.group(1)
                    alias = (m.group(2) or "").strip()
                    nexus["alias"] = None if alias in ("", "none") else alias
            elif key == "Connection" and nexus is not None:
                nexus["connections"].append({"cid": int(value), "address": None})
            elif key == "IP Address" and nexus is not None and nexus["connections"]:
                nexus["connections"][-1]["address"] = value
        elif section == "LUN information":
            if key == "LUN":
                lun = {}
                cur["luns"][int(value)] = lun
            elif lun is not None:
                field = {"SCSI ID": "scsi_id", "SCSI SN": "scsi_sn", "Readonly": "readonly",
                         "Backing store path": "path", "Size": "size"}.get(key)
                if field == "readonly":
                    lun[field] = value == "Yes"
                elif field:
                    lun[field] = value
    return targets


def lun_identity(url: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """What an initiator reads as the LUN's identity, through libiscsi's iscsi-inq:
    {"serial": VPD 0x80 unit serial (tgt right-aligns it in 36 spaces: stripped),
    "t10_vendor_id": the ASCII T10 designator of VPD 0x83, "vendor", "product"}.
    env: e.g. LIBISCSI_CHAP_USERNAME/PASSWORD for a CHAP target."""
    def inq(*args: str) -> str:
        # text with errors replaced: iscsi-inq prints binary designators (NAA) raw
        proc = subprocess.run(["iscsi-inq", *args, url], capture_output=True, text=True,
                              errors="backslashreplace", timeout=15,
                              env=dict(os.environ, **(env or {})))
        if proc.returncode != 0:
            raise ServiceError(f"iscsi-inq {' '.join(args)} {url}: "
                               f"{(proc.stdout + proc.stderr).strip()}")
        return proc.stdout

    ident: dict[str, str] = {}
    m = re.search(r"Unit Serial Number:\[(.*)\]", inq("-e", "1", "-c", "128"))
    if m:
        ident["serial"] = m.group(1).strip()
    page83 = inq("-e", "1", "-c", "131")
    m = re.search(r"Designator Type:\(1\) T10_VENDORT_ID\nDesignator:\[(.*)\]", page83)
    if m:
        ident["t10_vendor_id"] = m.group(1).strip()
    std = inq()
    for key, field in (("Vendor", "vendor"), ("Product", "product")):
        m = re.search(rf"^{key}:(.*)$", std, re.M)
        if m:
            ident[field] = m.group(1).strip()
    return ident
