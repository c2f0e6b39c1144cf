"""The lab's small guest: Debian's cloud kernel + a busybox initramfs that hashes its disk.

A guest of the lab's libvirt (tools/lab/libvirt.py) boots under TCG (no usable KVM
here) in a few seconds, reads the first N bytes of its virtio disk /dev/vda and
prints, on the serial console ttyS0,

    IH-DIGEST sha256=<hex> bytes=<N> dev=vda

then powers off (``poweroff -f``; the domain's on_poweroff is destroy, so a transient
domain is gone). With ``hold=True`` it keeps running instead (``IH-HOLD`` follows the
digest), so a test can block-pull its disk under it; with ``reread_seconds=S`` it
also drops its caches and hashes the disk again every S seconds, printing
``IH-DIGEST ... dev=vda pass=<k>`` (k = 2, 3, ...), so reads during and after a job
are checked too. Failures print ``IH-ERROR <why>`` and power off; a kernel panic
reboots (panic=-1), which the domain turns into destroy.

    guest = Guest().build()               # cached under .lab/cache/guest
    xml = guest.domain_xml("g1", "/path/disk.qcow2", "qcow2", backing="/path/base.raw",
                           copy_on_read=True, serial_log=log, nbytes=len(data))
    dom = libvirt_service.create_domain(xml)
    [d] = wait_digests(log, 1, dom=dom)   # Digest(sha256=..., nbytes=..., dev='vda')

How it is built (nothing is installed on the machine): ``apt-get download`` fetches
the kernel package (``linux-image-cloud-amd64``'s dependency, e.g.
linux-image-6.1.0-57-cloud-amd64, or the one named by ``kernel_package`` /
``IH_GUEST_KERNEL_PACKAGE``), ``dpkg-deb -x`` unpacks it into a scratch dir, and the
cache keeps ``vmlinuz``, ``config`` and the modules the guest must load to see a
virtio disk: the cloud kernel has CONFIG_VIRTIO_PCI=m and CONFIG_VIRTIO_BLK=m, so
virtio_pci and virtio_blk and their dependencies (modules.dep order: virtio,
virtio_ring, virtio_pci_legacy_dev, virtio_pci_modern_dev) are insmod'ed by the
init; a module listed in modules.builtin is skipped; .ko.xz/.ko.gz/.ko.zst are
decompressed (the 6.1 cloud kernel ships plain .ko). The initramfs (cpio newc,
gzip, written here in Python) holds /init, busybox-static's /bin/busybox, /dev/console
and those modules; its name carries a hash of its contents. The serial console
(8250) is built in. A cached kernel is used without asking apt again.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from .service import LAB_DIR, ServiceError

DEFAULT_CACHE_DIR = LAB_DIR / "cache" / "guest"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")  # busybox-static
EMULATOR = "/usr/bin/qemu-system-x86_64"
# What the guest needs to see /dev/vda: virtio over PCI and the virtio block driver.
VIRTIO_MODULES = ("virtio_pci", "virtio_blk")
MEMORY_MIB = 256

DIGEST_RE = re.compile(
    r"IH-DIGEST sha256=(?P<sha256>[0-9a-f]{64}) bytes=(?P<nbytes>\d+) dev=(?P<dev>\w+)"
    r"(?: pass=(?P<pass>\d+))?")
ERROR_RE = re.compile(r"IH-ERROR (?P<why>.*)")

INIT_SCRIPT = r"""#!/bin/busybox sh
# The lab guest's init (tools/lab/guest.py): hash the first ih_bytes of /dev/vda.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
out=/dev/console
say() { echo "$*" > "$out"; }
fail() { say "IH-ERROR $*"; poweroff -f; sleep 30; exit 1; }
nbytes=
hold=0
reread=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    ih_bytes=*) nbytes=${arg#ih_bytes=} ;;
    ih_hold=*) hold=${arg#ih_hold=} ;;
    ih_reread=*) reread=${arg#ih_reread=} ;;
  esac
done
say "IH-BOOT $(cut -d' ' -f1 /proc/uptime)"
for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m" || fail "insmod $m"
done
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1))
  [ "$i" -le 300 ] || fail "no /dev/vda"
  sleep 0.1
done
size=$(( $(cat /sys/block/vda/size) * 512 ))
[ -n "$nbytes" ] || nbytes=$size
[ "$nbytes" -le "$size" ] || fail "ih_bytes=$nbytes is more than the disk ($size bytes)"
set -o pipefail
digest() {
  sum=$(head -c "$nbytes" /dev/vda | sha256sum) || fail "reading /dev/vda"
  say "IH-DIGEST sha256=${sum%% *} bytes=$nbytes dev=vda$1"
}
digest ""
if [ "$hold" = 1 ]; then
  say "IH-HOLD"
  pass=1
  while :; do
    if [ "$reread" -gt 0 ]; then
      sleep "$reread"
      pass=$((pass + 1))
      blockdev --flushbufs /dev/vda
      echo 3 > /proc/sys/vm/drop_caches
      digest " pass=$pass"
    else
      sleep 3600
    fi
  done
fi
poweroff -f
sleep 30
"""


@dataclass(frozen=True)
class Digest:
    """One ``IH-DIGEST`` line of the serial console (pass 1 = the boot read)."""
    sha256: str
    nbytes: int
    dev: str
    pass_: int = 1


def read_digests(serial_log: Path | str) -> list[Digest]:
    """Every IH-DIGEST line of a serial log so far; ServiceError on an IH-ERROR line."""
    try:
        text = Path(serial_log).read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        err = ERROR_RE.search(line)
        if err:
            raise ServiceError(f"guest: {err['why'].strip()} (serial log {serial_log})")
        m = DIGEST_RE.search(line)
        if m:
            found.append(Digest(m["sha256"], int(m["nbytes"]), m["dev"],
                                int(m["pass"] or 1)))
    return found


def wait_digests(serial_log: Path | str, count: int = 1, *, timeout: float = 90.0,
                 dom: Any = None) -> list[Digest]:
    """Wait until the serial log has count IH-DIGEST lines; return them. With dom (a
    libvirt domain), a domain that stops first is an error (with the log's tail)."""
    deadline = time.monotonic() + timeout
    while True:
        found = read_digests(serial_log)
        if len(found) >= count:
            return found
        if dom is not None and not _domain_running(dom):
            found = read_digests(serial_log)  # its last line may have raced the stop
            if len(found) >= count:
                return found
            raise ServiceError(f"guest {dom.name()} stopped with {len(found)} of {count} "
                               f"digests; serial log:\n{_tail_text(serial_log)}")
        if time.monotonic() > deadline:
            raise ServiceError(f"guest: {len(found)} of {count} digests after "
                               f"{timeout:.0f} s; serial log:\n{_tail_text(serial_log)}")
        time.sleep(0.1)


def wait_line(serial_log: Path | str, text: str, *, timeout: float = 90.0) -> None:
    """Wait until a line containing text appears on the serial log."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if text in Path(serial_log).read_bytes().decode("utf-8", "replace"):
                return
        except FileNotFoundError:
            pass
        read_digests(serial_log)  # raises on IH-ERROR
        if time.monotonic() > deadline:
            raise ServiceError(f"guest: no {text!r} after {timeout:.0f} s; serial log:\n"
                               f"{_tail_text(serial_log)}")
        time.sleep(0.1)


def wait_gone(dom: Any, *, timeout: float = 60.0) -> None:
    """Wait until a (transient) domain has stopped: its guest powered off."""
    deadline = time.monotonic() + timeout
    while _domain_running(dom):
        if time.monotonic() > deadline:
            raise ServiceError(f"guest {dom.name()} still running after {timeout:.0f} s")
        time.sleep(0.1)


def _domain_running(dom: Any) -> bool:
    import libvirt  # noqa: PLC0415
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False  # a transient domain that stopped is gone
        raise


def _tail_text(path: Path | str, lines: int = 25) -> str:
    try:
        data = Path(path).read_bytes()[-8192:].decode("utf-8", "replace")
    except OSError:
        return f"(no serial log at {path})"
    return "\n".join(data.splitlines()[-lines:])


@dataclass(frozen=True)
class IscsiSource:
    """An ``iscsi://host[:port]/<target IQN>/<lun>`` URL, parsed."""
    host: str
    port: int
    target: str
    lun: int

    @property
    def name(self) -> str:
        """libvirt's ``<source protocol='iscsi' name=...>``: ``IQN/LUN``."""
        return f"{self.target}/{self.lun}"

    @property
    def url(self) -> str:
        return f"iscsi://{self.host}:{self.port}/{self.target}/{self.lun}"


def parse_iscsi_url(url: str) -> IscsiSource:
    """iscsi://HOST[:PORT]/IQN/LUN -> IscsiSource; credentials in the URL are refused
    (they would land in the domain XML and qemu's command line: use chap_user and a
    libvirt secret)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "iscsi" or not parts.hostname:
        raise ValueError(f"not an iscsi:// URL: {url!r}")
    if parts.username or parts.password:
        raise ValueError("iscsi URL with credentials: pass chap_user and a libvirt secret")
    if parts.query or parts.fragment:
        raise ValueError(f"iscsi URL with a query or fragment: {url!r}")
    path = parts.path.strip("/").split("/")
    if len(path) != 2 or not path[0] or not path[1].isdigit():
        raise ValueError(f"iscsi URL must be iscsi://host[:port]/<iqn>/<lun>: {url!r}")
    return IscsiSource(parts.hostname, parts.port or 3260, path[0], int(path[1]))


def _cpio_newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A cpio newc archive of (name, mode, data, (rdevmajor, rdevminor)) entries."""
    out = io.BytesIO()

    def pad(n: int) -> None:
        out.write(b"\0" * ((4 - n % 4) % 4))

    for ino, (name, mode, data, (rmaj, rmin)) in enumerate(
            [*entries, ("TRAILER!!!", 0, b"", (0, 0))], start=1):
        raw_name = name.encode() + b"\0"
        fields = (ino if name != "TRAILER!!!" else 0, mode, 0, 0, 1, 0, len(data),
                  0, 0, rmaj, rmin, len(raw_name), 0)
        header = b"070701" + b"".join(b"%08x" % f for f in fields)
        out.write(header + raw_name)
        pad(len(header) + len(raw_name))
        out.write(data)
        pad(len(data))
    return out.getvalue()


class Guest:
    """The cached guest kernel + initramfs and the libvirt XML that boots them."""

    def __init__(self, cache_dir: Path | None = None, *,
                 kernel_package: str | None = None) -> None:
        """kernel_package: e.g. "linux-image-6.1.0-57-cloud-amd64" (default: the one
        cached, else linux-image-cloud-amd64's dependency); also IH_GUEST_KERNEL_PACKAGE."""
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
        self.kernel_package = kernel_package or os.environ.get("IH_GUEST_KERNEL_PACKAGE")
        self.kernel_dir: Path | None = None
        self.info: dict[str, Any] = {}
        self._initrd: Path | None = None

    # -- what was built -----------------------------------------------------------
    @property
    def kernel(self) -> Path:
        return self._built() / "vmlinuz"

    @property
    def initrd(self) -> Path:
        self._built()
        assert self._initrd is not None
        return self._initrd

    @property
    def kernel_version(self) -> str:
        self._built()
        return str(self.info["kernel_version"])

    def _built(self) -> Path:
        if self.kernel_dir is None or self._initrd is None:
            raise ServiceError("guest: call build() first")
        return self.kernel_dir

    # -- building -------------------------------------------------------------------
    def build(self) -> "Guest":
        """Download/unpack the kernel and build the initramfs unless cached."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.kernel_dir = self._kernel_dir()
            self.info = json.loads((self.kernel_dir / "kernel.json").read_text())
            self._initrd = self._build_initrd(self.kernel_dir)
        return self

    def _kernel_dir(self) -> Path:
        kernels = self.cache_dir / "kernels"
        if self.kernel_package:
            for done in sorted(kernels.glob(f"{self.kernel_package}_*/kernel.json")):
                return done.parent
            return self._fetch_kernel(self.kernel_package)
        cached = sorted(kernels.glob("*/kernel.json"), key=lambda p: p.stat().st_mtime)
        if cached:
            return cached[-1].parent
        return self._fetch_kernel(self._resolve_kernel_package())

    @staticmethod
    def _resolve_kernel_package() -> str:
        out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
        for line in out.splitlines():
            m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
            if m:
                return m.group(1)
        raise ServiceError(f"guest: no linux-image dependency of {KERNEL_META_PACKAGE} "
                           f"in apt-cache:\n{out}")

    def _fetch_kernel(self, package: str) -> Path:
        """apt-get download + dpkg-deb -x; keep vmlinuz, config and the virtio modules."""
        kernels = self.cache_dir / "kernels"
        kernels.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".fetch-") as tmp_s:
            tmp = Path(tmp_s)
            os.chmod(tmp, 0o755)  # apt's _apt user writes the download into cwd
            _run(["apt-get", "download", package], cwd=tmp)
            debs = sorted(tmp.glob(f"{package}_*.deb"))
            if len(debs) != 1:
                raise ServiceError(f"guest: apt-get download {package} gave {debs}")
            version = debs[0].name[len(package) + 1:].rsplit("_", 1)[0]
            root = tmp / "unpacked"
            _run(["dpkg-deb", "-x", str(debs[0]), str(root)])
            vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
            if len(vmlinuz) != 1:
                raise ServiceError(f"guest: {package} has kernels {vmlinuz}")
            kver = vmlinuz[0].name[len("vmlinuz-"):]
            moddir = next(p for p in (root / "lib" / "modules" / kver,
                                      root / "usr" / "lib" / "modules" / kver) if p.is_dir())
            dest = kernels / f"{package}_{version}"
            stage = kernels / f".{dest.name}.tmp"
            shutil.rmtree(stage, ignore_errors=True)
            (stage / "modules").mkdir(parents=True)
            shutil.copy2(vmlinuz[0], stage / "vmlinuz")
            config = (root / "boot" / f"config-{kver}").read_text()
            (stage / "config").write_text(config)
            order = self._module_order(moddir)
            for rel in order:
                (stage / "modules" / _ko_name(rel)).write_bytes(_decompress_ko(moddir / rel))
            symbols = {k: v for k, v in re.findall(
                r"^(CONFIG_VIRTIO(?:_PCI|_BLK)?|CONFIG_SERIAL_8250_CONSOLE)=(\S+)$",
                config, re.M)}
            info = {"package": package, "version": version, "kernel_version": kver,
                    "modules": [_ko_name(r) for r in order], "config": symbols}
            (stage / "kernel.json").write_text(json.dumps(info, indent=2))
            shutil.rmtree(dest, ignore_errors=True)
            stage.rename(dest)
        return dest

    @staticmethod
    def _module_order(moddir: Path) -> list[str]:
        """Module files (relative to moddir) to insmod, dependencies first. The
        package has no modules.dep (depmod runs at install): each module's own
        ``depends=`` modinfo field is read instead; modules.builtin names those
        built into the kernel."""
        by_name = {_ko_name(str(p))[:-3].replace("-", "_"): p
                   for p in moddir.rglob("*.ko*") if re.search(r"\.ko(\.\w+)?$", p.name)}
        builtin_file = moddir / "modules.builtin"
        builtin = {_ko_name(p)[:-3].replace("-", "_") for p in
                   (builtin_file.read_text().split() if builtin_file.exists() else [])}
        order: list[str] = []

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in builtin:
                return
            if name not in by_name:
                raise ServiceError(f"guest: kernel has neither a {name} module nor it "
                                   f"built in (needed by {' <- '.join(chain) or 'the guest'})")
            rel = str(by_name[name].relative_to(moddir))
            if rel in order:
                return
            if name in chain:
                raise ServiceError(f"guest: module dependency loop {chain + (name,)}")
            for dep in _modinfo_depends(_decompress_ko(by_name[name])):
                visit(dep, (*chain, name))
            order.append(rel)

        for name in VIRTIO_MODULES:
            visit(name, ())
        return order

    def _build_initrd(self, kernel_dir: Path) -> Path:
        if not BUSYBOX.exists():
            raise ServiceError(f"guest: {BUSYBOX} missing: run tools/install-deps.sh "
                               "(busybox-static)")
        info = json.loads((kernel_dir / "kernel.json").read_text())
        busybox = BUSYBOX.read_bytes()
        modules = [(m, (kernel_dir / "modules" / m).read_bytes()) for m in info["modules"]]
        entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
            (d, 0o040755, b"", (0, 0)) for d in
            ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules")]
        entries += [
            ("dev/console", 0o020600, b"", (5, 1)),
            ("dev/null", 0o020666, b"", (1, 3)),
            ("bin/busybox", 0o100755, busybox, (0, 0)),
            ("init", 0o100755, INIT_SCRIPT.encode(), (0, 0)),
            ("lib/modules/load-order", 0o100644,
             "".join(m + "\n" for m, _ in modules).encode(), (0, 0)),
        ]
        entries += [(f"lib/modules/{m}", 0o100644, data, (0, 0)) for m, data in modules]
        archive = _cpio_newc(entries)
        digest = hashlib.sha256(archive).hexdigest()[:16]
        initrd = kernel_dir / f"initrd-{digest}.img"
        if not initrd.exists():
            tmp = initrd.with_suffix(".tmp")
            with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                gz.write(archive)
            tmp.replace(initrd)
        return initrd

    # -- booting ---------------------------------------------------------------------
    def cmdline(self, nbytes: int, *, hold: bool = False, reread_seconds: int = 0,
                kernel_log: bool = False) -> str:
        """The kernel command line: serial console, reboot on panic, the init's args."""
        if nbytes <= 0:
            raise ValueError("nbytes must be positive")
        args = ["console=ttyS0", "panic=-1", "loglevel=7" if kernel_log else "loglevel=1",
                f"ih_bytes={int(nbytes)}"]
        if hold:
            args.append("ih_hold=1")
            if reread_seconds:
                args.append(f"ih_reread={int(reread_seconds)}")
        elif reread_seconds:
            raise ValueError("reread_seconds needs hold=True")
        return " ".join(args)

    def domain_xml(self, name: str, disk_path: Path | str, disk_format: str, *,
                   backing: Path | str | None = None, backing_format: str = "raw",
                   chap_user: str | None = None, chap_secret_usage: str | None = None,
                   copy_on_read: bool = False, serial_log: Path | str, nbytes: int,
                   hold: bool = False, reread_seconds: int = 0,
                   memory_mib: int = MEMORY_MIB, kernel_log: bool = False) -> str:
        """libvirt XML of a TCG guest booting this kernel with disk_path as vda.

        disk_format: "raw" or "qcow2". backing: None (the chain libvirt finds in the
        image, if any -- a qcow2 with a backing file needs its format recorded), a
        file path, or an ``iscsi://host[:port]/IQN/LUN`` URL (``<backingStore
        type='network'>``; chap_user + chap_secret_usage name a libvirt secret of
        usage type iscsi, see LibvirtService.define_secret); the chain ends there.
        copy_on_read: ``<driver ... copy_on_read='on'/>`` (reads fill the overlay).
        serial_log: ttyS0 goes to this file. nbytes: what the guest hashes.
        """
        if disk_format not in ("raw", "qcow2"):
            raise ValueError(f"disk_format must be raw or qcow2, not {disk_format!r}")
        if backing is not None and disk_format != "qcow2":
            raise ValueError("a backing store needs a qcow2 disk")
        if (chap_user is None) != (chap_secret_usage is None):
            raise ValueError("chap_user and chap_secret_usage go together")
        cor = " copy_on_read='on'" if copy_on_read else ""
        backing_xml = ""
        if backing is not None:
            backing_xml = self._backing_xml(str(backing), backing_format, chap_user,
                                            chap_secret_usage)
        elif chap_user is not None:
            raise ValueError("CHAP applies to an iSCSI backing store")
        a = quoteattr
        return f"""\
<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{int(memory_mib)}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(self.kernel))}</kernel>
    <initrd>{escape(str(self.initrd))}</initrd>
    <cmdline>{escape(self.cmdline(nbytes, hold=hold, reread_seconds=reread_seconds,
                                  kernel_log=kernel_log))}</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{EMULATOR}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type={a(disk_format)}{cor}/>
      <source file={a(str(disk_path))}/>
{backing_xml}      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path={a(str(serial_log))} append='off'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""

    @staticmethod
    def _backing_xml(backing: str, fmt: str, chap_user: str | None,
                     usage: str | None) -> str:
        a = quoteattr
        if backing.startswith("iscsi:"):
            src = parse_iscsi_url(backing)
            auth = ""
            if chap_user is not None:
                auth = (f"\n          <auth username={a(chap_user)}>"
                        f"<secret type='iscsi' usage={a(str(usage))}/></auth>")
            return f"""\
      <backingStore type='network'>
        <format type={a(fmt)}/>
        <source protocol='iscsi' name={a(src.name)}>
          <host name={a(src.host)} port='{src.port}'/>{auth}
        </source>
        <backingStore/>
      </backingStore>
"""
        if "://" in backing:
            raise ValueError(f"backing must be a file path or an iscsi:// URL: {backing!r}")
        if chap_user is not None:
            raise ValueError("CHAP applies to an iSCSI backing store")
        return f"""\
      <backingStore type='file'>
        <format type={a(fmt)}/>
        <source file={a(backing)}/>
        <backingStore/>
      </backingStore>
"""


def _ko_name(rel: str) -> str:
    """kernel/drivers/block/virtio_blk.ko.xz -> virtio_blk.ko"""
    base = rel.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.(xz|gz|zst))?$", ".ko", base)


def _modinfo_depends(ko: bytes) -> list[str]:
    """The ``depends=a,b`` entry of a module's .modinfo section (NUL-separated)."""
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko)
    if m is None:
        return []
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d]


def _decompress_ko(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-dc", str(path)], check=True,
                              capture_output=True).stdout
    return data


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServiceError(f"guest: {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise ServiceError(f"guest: exited {proc.returncode}: {' '.join(argv)}\n"
                           f"{(proc.stdout + proc.stderr).strip()[-2000:]}")
    return proc.stdout
