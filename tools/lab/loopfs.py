"""A real local file system (XFS with reflink, btrfs, ext4) on a loop device.

These are the shared_fs handler's targets: FICLONE works on XFS (``-m reflink=1``) and
btrfs and fails with EOPNOTSUPP on ext4, so the handler's clone and its fallbacks run
against the kernel's own answers. The loop file is sparse (XFS needs >= 300 MiB, but
only ~65 MiB of it is written by mkfs).

    xfs = LoopFsService("xfs").start()          # ~0.1 s; reuses a mounted one
    write_fs_marker(xfs.mountpoint, "xfs-images")
    xfs.stop()                                  # umount, losetup -d, remove the dir

Layout of ``<run>/<name>/``: ``fs.img`` (the sparse backing file), ``mnt/`` (the mount),
``<name>.log``, ``state.json`` (loop device, backing file, fs type). There is no
daemon: ``command()`` is None, ``prepare()`` mounts, ``is_running()`` means "mounted
from our loop device". stop() (and ``python -m tools.lab stop all``) finds the mount
and the loop device by path (tools/lab/mounts.py), so it only frees its own.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import ClassVar

from . import mounts
from .service import LabService, ServiceError

LOSETUP = "/sbin/losetup"
MOUNT = "/bin/mount"
MKFS: dict[str, list[str]] = {
    "xfs": ["/sbin/mkfs.xfs", "-q"],
    "btrfs": ["/sbin/mkfs.btrfs", "-q"],
    "ext4": ["/sbin/mkfs.ext4", "-q"],
}
# Options used unless mkfs_args are given (mkfs.xfs refuses a respecified -m option).
DEFAULT_MKFS_ARGS: dict[str, tuple[str, ...]] = {"xfs": ("-m", "reflink=1")}
MIN_SIZE_MIB = {"xfs": 300}  # mkfs.xfs refuses smaller file systems
DEFAULT_SIZE_MIB = 320

# The identity marker the shared_fs handler checks (an operator or the devstack plugin
# writes it): the file system's id, then a newline, in this file at the mount's root.
FS_MARKER = ".image_handlers_fs_id"


def write_fs_marker(mountpoint: Path | str, fs_id: str) -> Path:
    """Write ``<mountpoint>/.image_handlers_fs_id`` = fs_id + newline, as an operator
    would: it names the file system Glance's location metadata ``id`` refers to."""
    if not fs_id or fs_id != fs_id.strip() or any(c.isspace() for c in fs_id):
        raise ValueError(f"bad file system id {fs_id!r}")
    path = Path(mountpoint) / FS_MARKER
    tmp = path.with_name(FS_MARKER + ".tmp")
    tmp.write_text(fs_id + "\n")
    tmp.replace(path)
    return path


def read_fs_marker(mountpoint: Path | str) -> str | None:
    """The id in the mount's marker file, or None when there is none."""
    try:
        return (Path(mountpoint) / FS_MARKER).read_text().strip() or None
    except OSError:
        return None


class LoopFsService(LabService):
    """One loop-mounted file system: ``mountpoint``, ``device``, ``fs_type``."""

    name: ClassVar[str] = "loopfs"
    start_timeout: ClassVar[float] = 30.0  # bound on each setup command

    def __init__(self, fs_type: str, *, size_mib: int = DEFAULT_SIZE_MIB,
                 name: str | None = None, run_dir: Path | None = None,
                 mkfs_args: tuple[str, ...] = ()) -> None:
        """fs_type: xfs (reflink on), btrfs or ext4. name: the instance (work dir;
        default fs_type). mkfs_args: mkfs options INSTEAD of the defaults (XFS:
        ``-m reflink=1``), e.g. ("-m", "reflink=0") for an XFS without reflink."""
        if fs_type not in MKFS:
            raise ValueError(f"fs_type must be one of {sorted(MKFS)}, not {fs_type!r}")
        if size_mib < MIN_SIZE_MIB.get(fs_type, 1):
            raise ValueError(f"{fs_type} needs at least {MIN_SIZE_MIB[fs_type]} MiB")
        name = name or fs_type
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad lab service name {name!r}")
        self.fs_type, self.size_mib = fs_type, size_mib
        self.mkfs_args = tuple(mkfs_args) or DEFAULT_MKFS_ARGS.get(fs_type, ())
        super().__init__(run_dir, name=name)

    # -- where things are -------------------------------------------------------
    @property
    def mountpoint(self) -> Path:
        return self.workdir / "mnt"

    @property
    def backing_file(self) -> Path:
        return self.workdir / "fs.img"

    @property
    def device(self) -> str | None:
        """/dev/loopN while mounted (recorded at start), else None."""
        return self.state.get("loop_device") or self._load_state().get("loop_device")

    # -- LabService hooks ---------------------------------------------------------
    def prepare(self) -> None:
        missing = [p for p in (LOSETUP, MOUNT, MKFS[self.fs_type][0]) if not Path(p).exists()]
        if missing:
            raise ServiceError(f"{self.name}: {', '.join(missing)} missing: run "
                               "tools/install-deps.sh (xfsprogs btrfs-progs)")
        self.mountpoint.mkdir()
        with open(self.backing_file, "wb") as f:
            f.truncate(self.size_mib << 20)  # sparse
        self.state.update(fs_type=self.fs_type, size_mib=self.size_mib,
                          mkfs_args=list(self.mkfs_args), mountpoint=str(self.mountpoint),
                          backing_file=str(self.backing_file))
        self.save_state()
        # mkfs on the file, before losetup: a failing mkfs leaves no loop device.
        self._run([*MKFS[self.fs_type], *self.mkfs_args, str(self.backing_file)])
        device = self._run([LOSETUP, "--find", "--show", str(self.backing_file)]).strip()
        self.state["loop_device"] = device  # recorded at once: stop() frees it
        self.save_state()
        self._run([MOUNT, "-t", self.fs_type, device, str(self.mountpoint)])

    def command(self) -> list[str] | None:
        return None  # no daemon: the kernel holds the mount

    def is_running(self) -> bool:
        """Mounted at mountpoint from a loop device backed by our file."""
        found = mounts.mount_of(self.mountpoint)
        if found is None or found[0] != self.fs_type:
            return False
        return mounts.loop_backing_file(found[1]) == str(self.backing_file.resolve())

    def is_healthy(self) -> bool:
        return self.is_running() and os.access(self.mountpoint, os.W_OK)

    def matches_config(self) -> bool:
        return (self.state.get("fs_type"), self.state.get("size_mib"),
                tuple(self.state.get("mkfs_args", ()))) == (
            self.fs_type, self.size_mib, self.mkfs_args)

    def _run(self, argv: list[str]) -> str:
        """Run a setup command (bounded), log it; ServiceError with its output."""
        with open(self.log_file, "ab") as log:
            log.write(f"+ {' '.join(argv)}\n".encode())
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=self.start_timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServiceError(f"{self.name}: {argv[0]}: {exc}") from exc
        with open(self.log_file, "a") as log:
            log.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise ServiceError(f"{self.name}: exited {proc.returncode}: {' '.join(argv)}\n"
                               f"{(proc.stdout + proc.stderr).strip()[-2000:]}")
        return proc.stdout

    def status(self) -> dict[str, object]:
        return {**super().status(), "mounted": self.is_running()}
