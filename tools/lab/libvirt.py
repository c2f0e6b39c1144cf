"""A private libvirt 9.0 (libvirtd + virtlogd, qemu driver) running TCG guests.

The iscsi_cor handler's hypervisor: the lab's small guest (tools/lab/guest.py) boots
under it from a raw disk, a qcow2 overlay over a file, or a qcow2 overlay over an
iSCSI LUN opened with copy_on_read='on', and libvirt's block pull fills the overlay
while the guest runs -- exactly what Nova's libvirt driver would drive.

    virt = LibvirtService().start()        # ~0.2 s (+8 s the very first time)
    conn = virt.connect()                  # libvirt.open(virt.uri)
    dom = virt.create_domain(xml)          # transient domain; its qemu is recorded
    virt.stop()                            # destroy domains, stop daemons, remove dir

How it is kept private (nothing of the machine's libvirt configuration is used or
written). A privileged libvirtd (root) has no option or environment variable that
moves its qemu driver's files: qemu.conf is always ``/etc/libvirt/qemu.conf``, state
is in ``/run/libvirt``, ``/var/lib/libvirt``, ``/var/log/libvirt`` and
``/var/cache/libvirt``, and virtlogd's socket is always ``/run/libvirt/virtlogd-sock``
(``qemu:///embed?root=`` moves them, but runs the driver inside the client, with no
libvirtd; ``--config`` and ``unix_sock_dir`` move only libvirtd.conf and the client
sockets). So both daemons run in a private mount namespace (``unshare --mount
--propagation private``), in which those directories are bind mounts:

    <run>/libvirt/etc    -> /etc/libvirt        libvirtd.conf, qemu.conf, virtlogd.conf
    <run>/libvirt/run    -> /run/libvirt        virtlogd-sock, qemu/<domain>.pid, ...
    <run>/libvirt/lib    -> /var/lib/libvirt    per-domain state (master key, ...)
    <run>/libvirt/log    -> /var/log/libvirt    libvirtd.log, virtlogd.log, qemu/<domain>.log
    <cache_dir>          -> /var/cache/libvirt  qemu capabilities (.lab/cache/libvirt)
    <run>/libvirt/nss/{passwd,group} -> /etc/{passwd,group}
    <run>/libvirt/sock/libvirt-sock             the client socket (unix_sock_dir)

The passwd/group copies are the machine's plus ``libvirt-qemu`` (user and group) and
``kvm`` when missing: libvirt 9.0's qemu driver resolves its built-in default user
``libvirt-qemu`` before it reads qemu.conf's ``user = "root"`` and refuses to start
without it (Debian creates it in libvirt-daemon-system, which is not installed).

The mounts exist only inside the namespace (private propagation: the machine's mount
table never shows them) and vanish with its last process. Outside the work dir the
only traces are the qemu capabilities cache (probing them costs ~8 s at a first
start; libvirt revalidates the cache against the qemu and libvirtd binaries) and the
four empty mount-point directories (/run/libvirt, /var/lib/libvirt, /var/log/libvirt,
/var/cache/libvirt) that start() creates when they are missing (``state
["created_mountpoints"]``); they are left in place, empty (a package's own
directories; removing one that another lab's namespace still uses as a mount point
would detach that mount there). /etc/libvirt/qemu.conf is NOT written, and several
run dirs can each run their own libvirtd. libvirt gives each qemu a mount namespace
of its own on top of this one (its private /dev); the binds are inherited.

qemu.conf: user/group root, ``dynamic_ownership = 0`` and ``remember_owner = 0`` (no
chown or xattrs on images, backing files and LUN-backed overlays),
``security_driver = "none"``, ``cgroup_controllers = []`` (libvirt would otherwise
make machine/ cgroups under /sys/fs/cgroup). libvirtd.conf: no TCP, socket auth
"none" with mode 0700 (root only), logs into the work dir.

Processes: the unshare'd shell execs libvirtd (the process-group leader);
virtlogd is its background job in the same group. qemu is started by libvirtd in a
session of its own: stop() destroys every domain through the API, kills the group,
then kills whatever process still sees this work dir's ``run`` at /run/libvirt (a
qemu whose libvirtd died), so nothing is left running. ``create_domain`` also records
each qemu pid (own_pid) for ``python -m tools.lab stop all``.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, ClassVar

from .service import LAB_DIR, LabService, ServiceError, alive, tail

LIBVIRTD = "/usr/sbin/libvirtd"
VIRTLOGD = "/usr/sbin/virtlogd"
UNSHARE = "/usr/bin/unshare"
QEMU = "/usr/bin/qemu-system-x86_64"

# work-dir subdir -> the fixed path a privileged libvirtd/virtlogd uses, bound over it.
PRIVATE_DIRS: dict[str, str] = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
}
CACHE_TARGET = "/var/cache/libvirt"  # bound to cache_dir (kept across starts)
DEFAULT_CACHE_DIR = LAB_DIR / "cache" / "libvirt"

# Resolved by the qemu driver at start-up (its built-in defaults) before qemu.conf's
# user/group = root apply; the lab's namespace gets them in its own /etc/passwd+group.
QEMU_USERS = (("libvirt-qemu", 64055),)
QEMU_GROUPS = (("libvirt-qemu", 64055), ("kvm", 64056))

QEMU_CONF = """\
# Written by tools/lab/libvirt.py; seen by libvirtd as /etc/libvirt/qemu.conf only
# inside the lab's mount namespace.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "logd"
"""

# Started by unshare in the new mount namespace: $1 = work dir, $2 = cache dir.
_NAMESPACE_SCRIPT = r"""
set -e
W=$1
C=$2
mount --bind "$W/etc" /etc/libvirt
mount --bind "$W/run" /run/libvirt
mount --bind "$W/lib" /var/lib/libvirt
mount --bind "$W/log" /var/log/libvirt
mount --bind "$C" /var/cache/libvirt
mount --bind "$W/nss/passwd" /etc/passwd
mount --bind "$W/nss/group" /etc/group
echo "lab-libvirt: namespace ready, starting virtlogd"
/usr/sbin/virtlogd -f "$W/etc/virtlogd.conf" -p "$W/run/virtlogd.pid" &
i=0
while [ ! -S /run/libvirt/virtlogd-sock ]; do
  i=$((i + 1))
  if [ "$i" -gt 400 ]; then echo "lab-libvirt: virtlogd did not start" >&2; exit 1; fi
  sleep 0.05
done
echo "lab-libvirt: starting libvirtd"
exec /usr/sbin/libvirtd --config "$W/etc/libvirtd.conf" --pid-file "$W/run/libvirtd.pid"
"""


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode("utf-8", "replace").split("\0")[:-1]


def _ignore_libvirt_error(_ctx: Any, _err: Any) -> None:
    """libvirt's error callback: the error is raised as libvirtError as well."""


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class LibvirtService(LabService):
    """libvirtd + virtlogd in a private mount namespace: ``uri``, ``connect()``."""

    name: ClassVar[str] = "libvirt"
    start_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 10.0
    destroy_timeout: ClassVar[float] = 15.0

    def __init__(self, name: str = "libvirt", run_dir: Path | None = None, *,
                 cache_dir: Path | None = None) -> None:
        """cache_dir: libvirtd's /var/cache/libvirt (the qemu capabilities it probes,
        ~8 s, at its first start and after qemu or libvirt change); kept across
        starts, default .lab/cache/libvirt, shared by run dirs (libvirt rewrites
        the files atomically and revalidates them)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad lab service name {name!r}")
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
        super().__init__(run_dir, name=name)

    # -- where things are ---------------------------------------------------------
    @property
    def socket_path(self) -> Path:
        """libvirtd's read-write client socket (unix_sock_dir is the work dir's sock/)."""
        return self.workdir / "sock" / "libvirt-sock"

    @property
    def uri(self) -> str:
        """Connection URI for libvirt.open() (and Nova's [libvirt] connection_uri)."""
        return f"qemu+unix:///system?socket={self.socket_path}"

    def private_dir(self, key: str) -> Path:
        """The work dir's stand-in for PRIVATE_DIRS[key] (e.g. "log" = /var/log/libvirt)."""
        if key not in PRIVATE_DIRS:
            raise KeyError(key)
        return self.workdir / key

    def domain_log(self, domain: str) -> Path:
        """qemu's stdout/stderr log of a domain (written through virtlogd)."""
        return self.private_dir("log") / "qemu" / f"{domain}.log"

    # -- config -------------------------------------------------------------------
    def _libvirtd_conf(self) -> str:
        w = self.workdir
        return f"""\
# Written by tools/lab/libvirt.py: the lab's libvirtd, unix socket only, root only.
listen_tls = 0
listen_tcp = 0
unix_sock_dir = "{w}/sock"
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_level = 3
log_outputs = "3:file:{w}/log/libvirtd.log"
keepalive_interval = 5
keepalive_count = 5
"""

    def _virtlogd_conf(self) -> str:
        return f"""\
# Written by tools/lab/libvirt.py.
log_level = 3
log_outputs = "3:file:{self.workdir}/log/virtlogd.log"
max_clients = 64
"""

    # -- LabService hooks ---------------------------------------------------------
    def prepare(self) -> None:
        missing = [p for p in (LIBVIRTD, VIRTLOGD, UNSHARE, QEMU) if not Path(p).exists()]
        if missing:
            raise ServiceError(f"{self.name}: {', '.join(missing)} missing: run "
                               "tools/install-deps.sh (libvirt-daemon "
                               "libvirt-daemon-driver-qemu qemu-system-x86)")
        if os.geteuid() != 0:
            raise ServiceError(f"{self.name}: needs root (a privileged libvirtd, "
                               "mount namespace)")
        for sub in (*PRIVATE_DIRS, "sock", "nss"):
            (self.workdir / sub).mkdir(mode=0o700)
        (self.workdir / "log" / "qemu").mkdir()
        self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        created = []
        # Mount points of the namespace's binds (left in place: see the module doc).
        for target in (*PRIVATE_DIRS.values(), CACHE_TARGET):
            if not os.path.isdir(target):
                os.makedirs(target, mode=0o755, exist_ok=True)
                created.append(target)
        self._write_nss()
        etc = self.private_dir("etc")
        (etc / "libvirtd.conf").write_text(self._libvirtd_conf())
        (etc / "virtlogd.conf").write_text(self._virtlogd_conf())
        (etc / "qemu.conf").write_text(QEMU_CONF)
        # The machine's client config (uri aliases...) is not libvirtd's business, but
        # an empty libvirt.conf keeps libvirtd from reading anything of the host's.
        (etc / "libvirt.conf").write_text("# lab libvirt: empty\n")
        self.state.update(socket=str(self.socket_path), uri=self.uri, endpoint=self.uri,
                          created_mountpoints=created, mnt_ns=None)
        self.save_state()

    def _write_nss(self) -> None:
        """The namespace's /etc/passwd and /etc/group: the machine's, plus the qemu
        user and group libvirt's qemu driver resolves at start-up even when qemu.conf
        says root (Debian's libvirt-daemon-system would create them system-wide)."""
        nss = self.workdir / "nss"
        for file, ids in (("passwd", QEMU_USERS), ("group", QEMU_GROUPS)):
            text = Path("/etc", file).read_text()
            names = {line.split(":", 1)[0] for line in text.splitlines() if line}
            taken = {line.split(":")[2] for line in text.splitlines() if line.count(":") >= 3}
            extra = []
            for name, num in ids:
                if name in names:
                    continue
                while str(num) in taken:
                    num += 1
                taken.add(str(num))
                extra.append(f"{name}:x:{num}:{num}:lab libvirt:/nonexistent:/usr/sbin/nologin"
                             if file == "passwd" else f"{name}:x:{num}:")
            if text and not text.endswith("\n"):
                text += "\n"
            (nss / file).write_text(text + "".join(e + "\n" for e in extra))

    def command(self) -> list[str]:
        return [UNSHARE, "--mount", "--propagation", "private", "--",
                "/bin/sh", "-c", _NAMESPACE_SCRIPT, "lab-libvirt", str(self.workdir),
                str(self.cache_dir)]

    def is_healthy(self) -> bool:
        """Both daemons' sockets accept connections."""
        for path in (self.socket_path, self.private_dir("run") / "virtlogd-sock"):
            if not path.is_socket():
                return False
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(1.0)
                    s.connect(str(path))
            except OSError:
                return False
        return True

    def start(self) -> "LibvirtService":
        super().start()
        if not self.reused:
            pid = self.pid()
            ns = self._mnt_ns(pid) if pid else None
            if ns is None or ns == self._mnt_ns(os.getpid()):
                self._fail("libvirtd is not in a mount namespace of its own")
            self.state["mnt_ns"] = ns
            self.save_state()
        return self

    # -- client side --------------------------------------------------------------
    def connect(self, readonly: bool = False) -> Any:
        """A libvirt.virConnect to this libvirtd (needs libvirt-python). Also replaces
        libvirt's default error handler, which prints every error to stderr (errors
        are raised as libvirt.libvirtError anyway), process-wide."""
        import libvirt  # noqa: PLC0415  (stdlib-only at import time)
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        if readonly:
            return libvirt.openReadOnly(self.uri)
        return libvirt.open(self.uri)

    def create_domain(self, xml: str, conn: Any = None, flags: int = 0) -> Any:
        """Start a transient domain from xml; its qemu is recorded for stop()."""
        conn = conn or self.connect()
        dom = conn.createXML(xml, flags)
        pid = self.qemu_pid(dom.name())
        if pid is not None:
            self.own_pid(pid)
        return dom

    def qemu_pid(self, domain: str) -> int | None:
        """The pid of a running domain's qemu, from libvirt's pid file."""
        try:
            pid = int((self.private_dir("run") / "qemu" / f"{domain}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def define_secret(self, usage: str, value: bytes | str, *, conn: Any = None,
                      usage_type: str = "iscsi") -> str:
        """Create (or update) a private libvirt secret of usage_type ("iscsi", "ceph")
        named usage; set its value; return its UUID. A disk's ``<auth>`` names it
        with ``<secret type='iscsi' usage='USAGE'/>``."""
        from xml.sax.saxutils import escape  # noqa: PLC0415
        conn = conn or self.connect()
        tag = {"iscsi": "target", "ceph": "name", "volume": "volume"}[usage_type]
        xml = (f"<secret ephemeral='no' private='yes'><description>lab "
               f"{escape(usage)}</description><usage type='{usage_type}'>"
               f"<{tag}>{escape(usage)}</{tag}></usage></secret>")
        sec = conn.secretDefineXML(xml, 0)
        sec.setValue(value.encode() if isinstance(value, str) else value, 0)
        return sec.UUIDString()

    # -- processes ----------------------------------------------------------------
    @staticmethod
    def _mnt_ns(pid: int) -> str | None:
        try:
            return os.readlink(f"/proc/{pid}/ns/mnt")
        except OSError:
            return None

    def namespace_pids(self) -> list[int]:
        """Live processes that see this work dir's ``run`` at /run/libvirt: libvirtd,
        virtlogd, qemu (in the lab's mount namespace or one made from it)."""
        try:
            ours = os.stat(self.private_dir("run"))
        except OSError:
            return []
        host_ns = self._mnt_ns(os.getpid())
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            ns = self._mnt_ns(pid)
            if ns is None or ns == host_ns or not alive(pid):
                continue
            try:
                seen = os.stat(f"/proc/{pid}/root/run/libvirt")
            except OSError:
                continue
            if _same_file(seen, ours):
                found.append(pid)
        return found

    def _destroy_domains(self) -> list[str]:
        """Destroy (and undefine) every domain of this libvirtd; problems returned."""
        problems: list[str] = []
        try:
            import libvirt  # noqa: PLC0415
        except ImportError:
            return ["libvirt-python missing: domains killed by pid only"]
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            return [f"connect: {exc}"]
        try:
            for dom in conn.listAllDomains(0):
                name = dom.name()
                persistent = bool(dom.isPersistent())  # before: a transient one vanishes
                for what, call in (("destroy", dom.destroyFlags),
                                   ("undefine", dom.undefineFlags)):
                    if what == "undefine" and not persistent:
                        continue
                    try:
                        call(0)
                    except libvirt.libvirtError as exc:
                        if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN,
                                                        libvirt.VIR_ERR_OPERATION_INVALID):
                            problems.append(f"{what} {name}: {exc}")
        finally:
            conn.close()
        return problems

    def _kill_namespace(self) -> None:
        """SIGTERM, then SIGKILL, whatever is still in the lab's namespace."""
        for sig, wait in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)):
            pids = self.namespace_pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while any(alive(p) for p in pids) and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)
        left = self.namespace_pids()
        if left:
            raise ServiceError(f"{self.name}: {[(p, _cmdline(p)[:1]) for p in left]} "
                               "survived SIGKILL")

    def release(self) -> None:
        """Destroy the domains (while libvirtd runs), then kill the daemons, any qemu
        left, and recorded pids; mounts are the namespace's and go with it."""
        problems: list[str] = []
        if self.workdir.is_dir() and self.is_running() and self.is_healthy():
            problems = self._destroy_domains()
        # Everything that sees our /run/libvirt first (it may include qemu whose pid
        # was never recorded), then the process group and recorded pids.
        try:
            self._kill_namespace()
        finally:
            super().release()
        if problems and self.workdir.is_dir():
            with open(self.log_file, "a") as log:
                log.write("stop: " + "; ".join(problems) + "\n")

    def _fail(self, why: str) -> None:
        """Free everything, keep the dir, raise with the daemons' logs."""
        self._release_quietly()
        logs = [self.log_file, self.private_dir("log") / "libvirtd.log",
                self.private_dir("log") / "virtlogd.log"]
        detail = "\n".join(f"--- {p}:\n{tail(p, 15)}" for p in logs if p.exists())
        raise ServiceError(f"lab service {self.name!r} {why}\n{detail}")

    def status(self) -> dict[str, Any]:
        return {**super().status(), "uri": self.uri,
                "processes": len(self.namespace_pids())}
