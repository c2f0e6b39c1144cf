"""A small RAW disk image that boots by itself: the lab guest on a syslinux FAT disk.

Nova boots a Glance image as the root disk with no kernel of its own (no
``kernel_id``): the disk must carry its boot loader. This builds one from the lab's
guest (tools/lab/guest.py: Debian's cloud kernel + the busybox initramfs that hashes
its disk): a whole-disk FAT file system (``mkfs.fat -C``, no partition table) whose
boot sector is syslinux's (``syslinux --install``, through mtools: nothing is
mounted), holding ``vmlinuz``, ``initrd.gz`` and ``syslinux.cfg``. SeaBIOS loads
sector 0 from the virtio disk, syslinux loads the kernel from the same disk, and
the guest prints ``IH-DIGEST sha256=<first ih_bytes of /dev/vda>`` on ttyS0 (Nova
sends ttyS0 to the instance's ``console.log``), then holds (``ih_hold=1``): a
server stays ACTIVE instead of powering off under Nova.

``ih_bytes`` is the image's own size, so the digest the guest prints is the sha256
of the image file: the root disk Nova gave it (an RBD clone, a reflink of Glance's
file, a copy) read the image's bytes. The image is cached by content under
.lab/cache/boot-disk (built in ~0.3 s once the guest is cached).

    disk = BootDisk().build()      # .path, .size, .sha256
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .guest import Guest
from .service import LAB_DIR, ServiceError

DEFAULT_CACHE_DIR = LAB_DIR / "cache" / "boot-disk"
SIZE_MIB = 32  # kernel (~8 MiB) + initramfs (~1.5 MiB) + FAT; the guest hashes it all
TOOLS = ("/usr/sbin/mkfs.fat", "/usr/bin/syslinux", "/usr/bin/mcopy")


@dataclass(frozen=True)
class BootDiskImage:
    """A built image: where, how big, and the sha256 the guest must print."""
    path: Path
    size: int
    sha256: str
    cmdline: str


class BootDisk:
    """Builds (or finds cached) the bootable raw image of the lab guest."""

    def __init__(self, cache_dir: Path | None = None, *, size_mib: int = SIZE_MIB,
                 guest: Guest | None = None) -> None:
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
        self.size = size_mib << 20
        self.guest = guest or Guest()

    def build(self) -> BootDiskImage:
        missing = [t for t in TOOLS if not Path(t).exists()]
        if missing:
            raise ServiceError(f"boot disk: {', '.join(missing)} missing: run "
                               "tools/install-deps.sh (dosfstools syslinux mtools)")
        self.guest.build()
        cmdline = self.guest.cmdline(self.size, hold=True)
        key = hashlib.sha256(b"\0".join([
            self.guest.kernel.read_bytes(), self.guest.initrd.read_bytes(),
            cmdline.encode(), str(self.size).encode()])).hexdigest()[:16]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.cache_dir / f"lab-guest-{key}.raw"
        meta = path.with_suffix(".json")
        with open(self.cache_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (path.exists() and meta.exists()):
                self._make(path, meta, cmdline)
        info = json.loads(meta.read_text())
        return BootDiskImage(path=path, size=info["size"], sha256=info["sha256"],
                             cmdline=cmdline)

    def _make(self, path: Path, meta: Path, cmdline: str) -> None:
        """Write the image beside its final name, then publish it by rename."""
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        cfg = tmp.with_suffix(".cfg")
        try:
            cfg.write_text("DEFAULT lab\nPROMPT 0\nTIMEOUT 0\nSERIAL 0 115200\n"
                           "LABEL lab\n  KERNEL vmlinuz\n  INITRD initrd.gz\n"
                           f"  APPEND {cmdline}\n")
            _run(["/usr/sbin/mkfs.fat", "-C", "-n", "LABGUEST", str(tmp),
                  str(self.size >> 10)])
            _run(["/usr/bin/syslinux", "--install", str(tmp)])
            env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
            for src, name in ((self.guest.kernel, "vmlinuz"),
                              (self.guest.initrd, "initrd.gz"), (cfg, "syslinux.cfg")):
                _run(["/usr/bin/mcopy", "-i", str(tmp), str(src), f"::{name}"], env=env)
            if tmp.stat().st_size != self.size:
                raise ServiceError(f"boot disk: {tmp} is {tmp.stat().st_size} bytes, "
                                   f"not {self.size}")
            digest = hashlib.sha256()
            with open(tmp, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            meta.write_text(json.dumps({"size": self.size, "sha256": digest.hexdigest(),
                                        "cmdline": cmdline}))
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
            cfg.unlink(missing_ok=True)


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, env=env, timeout=120)
    if proc.returncode != 0:
        raise ServiceError(f"boot disk: {' '.join(argv)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
