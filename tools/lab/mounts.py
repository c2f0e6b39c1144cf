"""Mounts and loop devices owned by a lab work dir, found by path (stdlib only).

A mount belongs to a service when its mount point lies under the service's work dir;
a loop device when its backing file does (the kernel's view, from
/sys/block/loopN/loop/backing_file). Both are found by scanning rather than only from
state.json, so ``stop all`` also frees what a start left behind when it crashed
between ``losetup`` and ``save_state()``, and nothing outside the dir is ever touched.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

UMOUNT = "/bin/umount"
LOSETUP = "/sbin/losetup"
_DELETED = " (deleted)"


def _unescape(field: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as \040, \011, \012, \134."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, source) of every mount in this mount namespace."""
    rows = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 2:
                rows.append((_unescape(fields[4]), tail[0], _unescape(tail[1])))
    return rows


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _root(path: Path | str) -> str:
    # Resolve the root only: a mount point itself is never stat'ed (a dead FUSE
    # mount would answer ENOTCONN or hang). mountinfo paths are already canonical.
    return os.path.realpath(path)


def mounts_under(root: Path | str) -> list[tuple[str, str, str]]:
    """Mounts at or below root, deepest first (the order to unmount them in)."""
    r = _root(root)
    found = [m for m in mounts() if _under(m[0], r)]
    return sorted(found, key=lambda m: m[0].count("/"), reverse=True)


def mount_of(mountpoint: Path | str) -> tuple[str, str] | None:
    """(fs type, source) of the topmost mount exactly at mountpoint, or None."""
    parent, leaf = os.path.split(os.path.abspath(mountpoint))
    mp = os.path.join(_root(parent), leaf)  # the mount point itself is not stat'ed
    hits = [(fstype, src) for path, fstype, src in mounts() if path == mp]
    return hits[-1] if hits else None


def loop_backing_file(device: str) -> str | None:
    """Backing file of /dev/loopN (without the kernel's " (deleted)"), or None."""
    try:
        raw = Path(f"/sys/block/{Path(device).name}/loop/backing_file").read_text()
    except OSError:
        return None
    raw = raw.rstrip("\n")
    return raw[:-len(_DELETED)] if raw.endswith(_DELETED) else raw


def loops_under(root: Path | str) -> list[tuple[str, str]]:
    """(/dev/loopN, backing file) of every loop device backed by a file under root."""
    r = _root(root)
    found = []
    for entry in sorted(Path("/sys/block").glob("loop*")):
        backing = loop_backing_file(entry.name)
        if backing and _under(backing, r):
            found.append((f"/dev/{entry.name}", backing))
    return found


def _run(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def umount(mountpoint: str, timeout: float = 30.0) -> str:
    """Unmount; if busy, detach it lazily (it is gone from the tree at once, the kernel
    frees it when the last user lets go). Returns "umount" or "lazy"; OSError if
    it is still mounted after both."""
    proc = _run([UMOUNT, mountpoint], timeout)
    if proc.returncode == 0:
        return "umount"
    lazy = _run([UMOUNT, "-l", mountpoint], timeout)
    if lazy.returncode == 0:
        return "lazy"
    raise OSError(f"cannot unmount {mountpoint}: {proc.stderr.strip()}; "
                  f"lazily: {lazy.stderr.strip()}")


def detach_loop(device: str, backing_file: str) -> None:
    """Detach device if, and only if, it is still backed by backing_file. If the
    device is still in use (after a lazy umount), the kernel detaches it when freed."""
    if loop_backing_file(device) != backing_file:
        return  # already detached, or reused by someone else since the scan
    proc = _run([LOSETUP, "-d", device])
    if proc.returncode != 0 and loop_backing_file(device) == backing_file:
        raise OSError(f"cannot detach {device} ({backing_file}): {proc.stderr.strip()}")


def release_under(root: Path | str) -> list[str]:
    """Unmount everything under root, then detach loop devices backed by files under
    it. Returns the problems (empty when all is freed); never raises for one item."""
    problems = []
    for mountpoint, _, _ in mounts_under(root):
        try:
            umount(mountpoint)
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(str(exc))
    for device, backing in loops_under(root):
        try:
            detach_loop(device, backing)
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(str(exc))
    return problems
