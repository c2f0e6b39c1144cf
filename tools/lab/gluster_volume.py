"""One more GlusterFS volume in a running lab gluster, with its own brick and mount.

Only one glusterd can run per machine (tools/lab/gluster.py) and other runs' tests
use its volume, so a test that kills a brick must not kill that one: it adds a volume
of its own to the same glusterd, kills and restarts only that volume's brick, and
deletes the volume afterwards.

    vol = GlusterVolume(GlusterService(run_dir=shared).start(), "faultvol").start()
    vol.mountpoint                # <run>/<name>/mnt, fuse.glusterfs
    vol.kill_brick()              # SIGKILL its glusterfsd, as a crash would
    vol.start_brick()             # ``gluster volume start VOL force``; waits for I/O
    pids = vol.pause_brick()      # SIGSTOP it (a hang); vol.resume_brick(pids) after
    vol.stop()                    # umount, volume stop + delete, remove the dir
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from . import mounts
from .gluster import MOUNT, GlusterService, volume_processes
from .service import (LabService, ServiceError, alive, continue_processes,
                      stop_processes)


class GlusterVolume(LabService):
    """Volume ``volume`` (one brick in ``<workdir>/brick``) of ``gluster``'s glusterd,
    FUSE-mounted at ``mountpoint``. No daemon of its own: prepare() makes it all."""

    def __init__(self, gluster: GlusterService, volume: str, *, name: str | None = None,
                 run_dir: Path | None = None) -> None:
        if not volume.isidentifier() or volume == gluster.volume:
            raise ValueError(f"bad volume name {volume!r} (the lab volume is "
                             f"{gluster.volume!r})")
        self.gluster = gluster
        self.volume = volume
        super().__init__(run_dir, name=name or f"gluster-{volume}")

    @property
    def mountpoint(self) -> Path:
        return self.workdir / "mnt"

    @property
    def brick_dir(self) -> Path:
        return self.workdir / "brick"

    def command(self) -> list[str] | None:
        return None

    def _mounted(self) -> bool:
        found = mounts.mount_of(self.mountpoint)
        return found is not None and found[0] == "fuse.glusterfs"

    def is_running(self) -> bool:
        return self.workdir.is_dir() and self._mounted()

    def is_healthy(self) -> bool:
        return self._mounted() and self.brick_pid() is not None

    def prepare(self) -> None:
        if not self.gluster.is_healthy():
            raise ServiceError(f"{self.name}: lab gluster {self.gluster.workdir} is not "
                               "running: start it first")
        for sub in ("brick", "mnt"):
            (self.workdir / sub).mkdir()
        self.state.update(volume=self.volume, gluster=str(self.gluster.workdir),
                          mountpoint=str(self.mountpoint))
        self.save_state()
        cli = self.gluster._cli
        cli("volume", "create", self.volume, f"{self.gluster.host}:{self.brick_dir}",
            "force")
        self.state["created"] = True
        self.save_state()
        cli("volume", "start", self.volume)
        self._own_processes()
        self.gluster._run([MOUNT, "-t", "glusterfs", "-o",
                           f"log-file={self.workdir / 'fuse.log'}",
                           f"{self.gluster.host}:/{self.volume}", str(self.mountpoint)])
        self._own_processes()

    def _processes(self) -> dict[str, list[tuple[int, list[str]]]]:
        """Live brick and FUSE client of this volume."""
        return volume_processes(self.brick_dir, self.mountpoint)

    def _own_processes(self) -> None:
        known = {int(p) for p, _ in self._owned("owned_pids")}
        for kind, procs in self._processes().items():
            for pid, argv in procs:
                if pid not in known:
                    self.own_pid(pid)
                if kind == "brick" and "-S" in argv[:-1]:
                    self.own_path(argv[argv.index("-S") + 1])

    def brick_pid(self) -> int | None:
        procs = self._processes()["brick"]
        return procs[0][0] if procs else None

    # -- faults -----------------------------------------------------------------------
    def kill_brick(self) -> int:
        """SIGKILL this volume's brick (glusterfsd); returns its pid."""
        pid = self.brick_pid()
        if pid is None:
            raise ServiceError(f"{self.name}: no brick running")
        os.kill(pid, signal.SIGKILL)
        # Until init reaps the zombie (~1.5 s here) glusterd's kill(pid, 0) still
        # finds it, and "volume start force" would skip the brick as running.
        deadline = time.monotonic() + 10.0
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if alive(pid):
            raise ServiceError(f"{self.name}: brick {pid} survived SIGKILL")
        return pid

    def pause_brick(self) -> list[int]:
        """SIGSTOP this volume's brick: it keeps its sockets and answers nothing (a
        hung server, not a dead one). Returns its pid in a list for resume_brick."""
        pid = self.brick_pid()
        if pid is None:
            raise ServiceError(f"{self.name}: no brick running")
        return stop_processes([pid], f"{self.name} brick")

    def set_option(self, key: str, value: str) -> None:
        """``gluster volume set VOL KEY VALUE`` (e.g. performance.io-cache off, so
        the FUSE client's own cache does not answer reads a test wants from the
        brick)."""
        self.gluster._cli("volume", "set", self.volume, key, value)

    @staticmethod
    def drop_cached(path: Path) -> None:
        """Drop the client's cached pages of a file on the mount (written through
        it just now), so the next read asks the brick."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def resume_brick(self, pids: list[int]) -> None:
        """SIGCONT what ``pause_brick`` stopped."""
        continue_processes(pids)

    def start_brick(self, timeout: float = 60.0) -> float:
        """``gluster volume start VOL force`` (restarts a dead brick), then wait until
        the FUSE client writes through it again; returns the seconds that took."""
        t0 = time.monotonic()
        while self.brick_pid() is None:
            self.gluster._cli("volume", "start", self.volume, "force")
            if self.brick_pid() is None:   # glusterd still saw the dead one: again
                if time.monotonic() - t0 > timeout:
                    raise ServiceError(f"{self.name}: no brick {timeout:.0f} s after "
                                       "volume start force")
                time.sleep(0.5)
        self._own_processes()
        probe = self.mountpoint / ".lab-probe"
        while True:
            try:
                probe.write_bytes(b"probe")
                probe.unlink()
                break
            except OSError as exc:
                if time.monotonic() - t0 > timeout:
                    raise ServiceError(f"{self.name}: mount not writable {timeout:.0f} s "
                                       f"after the brick restart: {exc}") from exc
                time.sleep(0.1)
        return round(time.monotonic() - t0, 2)

    def stop(self) -> None:
        """Unmount, stop and delete the volume in glusterd, kill what is left, remove
        the dir (and the brick socket glusterd left in /var/run/gluster)."""
        if self.workdir.is_dir():
            self._own_processes()
        if self._mounted():
            try:
                mounts.umount(str(self.mountpoint))
            except OSError as exc:
                self._note(f"umount: {exc}")
        if self._load_state().get("created") and self.gluster.is_healthy():
            for args in (("volume", "stop", self.volume, "force"),
                         ("volume", "delete", self.volume)):
                try:
                    self.gluster._cli(*args, timeout=15.0)
                except ServiceError as exc:
                    self._note(str(exc))
        super().stop()

    def _note(self, text: str) -> None:
        if self.workdir.is_dir():
            with open(self.log_file, "a") as log:
                log.write(text.rstrip("\n") + "\n")

    def status(self) -> dict[str, Any]:
        return {**super().status(), "mounted": self._mounted(),
                "brick_pid": self.brick_pid()}
