"""Base class for one lab service: a real daemon started detached and stopped cleanly.

Stdlib only: this module is imported by the project's venv (pytest fixtures) and by
plain ``python3 -m tools.lab``. Every service owns ``<repo>/.lab/run/<name>/`` (config,
pid file, log, state); ``stop()`` kills its whole process group and removes that dir,
so a test run leaves nothing behind. What a service holds outside its process group
is freed too: processes and paths it recorded (``own_pid``/``own_path``, for daemons
that detach themselves), mounts under its dir and loop devices backed by files in it
(tools/lab/mounts.py). A service without a daemon (a mount) returns None from
``command()``: its ``prepare()`` does the whole start.
"""

from __future__ import annotations

import abc
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

from . import mounts

REPO_ROOT = Path(__file__).resolve().parents[2]
LAB_DIR = REPO_ROOT / ".lab"
# IH_LAB_RUN_DIR lets two test runs (or a run and a demo) keep separate services.
RUN_DIR = Path(os.environ.get("IH_LAB_RUN_DIR") or LAB_DIR / "run")
LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A lab service failed to start or stop; the message names it and its log."""


def free_port(host: str = LOOPBACK) -> int:
    """Ask the kernel for a currently free TCP port (the service binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def state_port(svc: "LabService") -> int:
    """The port a started service recorded in its state; services that keep their
    port there say ``port = property(state_port)``."""
    if "port" not in svc.state:
        raise ServiceError(f"{svc.name}: not started (no port in state)")
    return int(svc.state["port"])


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when url answers 2xx (proxies bypassed: the lab is loopback only)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def _start_time(pid: int) -> str | None:
    """Kernel start time of pid: guards against a recycled pid in a stale pid file."""
    st = _proc_stat(pid)
    return st[19] if st else None


def alive(pid: int) -> bool:
    """pid exists and is not a zombie."""
    st = _proc_stat(pid)
    return bool(st) and st[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group pgid."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        st = _proc_stat(int(entry.name))
        if st and st[0] not in ("Z", "X") and int(st[2]) == pgid:
            members.append(int(entry.name))
    return members


def stop_processes(pids: list[int], what: str, timeout: float = 5.0) -> list[int]:
    """SIGSTOP pids (a hang: sockets stay open, nothing answers) and wait until the
    kernel shows each stopped; returns those stopped. Pair it with
    ``continue_processes`` in a ``finally`` (or use ``held_stopped``)."""
    stopped = []
    try:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            stopped.append(pid)
        deadline = time.monotonic() + timeout
        while any((_proc_stat(p) or ["T"])[0] not in ("T", "t", "Z", "X")
                  for p in stopped):
            if time.monotonic() > deadline:
                raise ServiceError(f"{what}: pids {stopped} not stopped {timeout:.0f} s "
                                   "after SIGSTOP")
            time.sleep(0.01)
    except BaseException:
        continue_processes(stopped)
        raise
    return stopped


def continue_processes(pids: list[int]) -> None:
    """SIGCONT what ``stop_processes`` stopped (gone ones are skipped)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def tail(path: Path, lines: int = 30) -> str:
    """Last lines of a log file, for error messages."""
    try:
        data = path.read_bytes()[-16384:].decode("utf-8", "replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.splitlines()[-lines:])


class LabService(abc.ABC):
    """One daemon of the lab. Subclasses fill in prepare/command/environment/is_healthy."""

    name: ClassVar[str] = "service"
    start_timeout: ClassVar[float] = 30.0
    stop_timeout: ClassVar[float] = 10.0

    def __init__(self, run_dir: Path | None = None, *, name: str | None = None) -> None:
        if name:
            self.name = name  # type: ignore[misc]  # instance attribute over the ClassVar
        self.workdir = Path(run_dir or RUN_DIR) / self.name
        self.pid_file = self.workdir / "pid"
        self.log_file = self.workdir / f"{self.name}.log"
        self.state_file = self.workdir / "state.json"
        self.state: dict[str, Any] = self._load_state()
        self._proc: subprocess.Popen[bytes] | None = None
        self.reused = False  # start() found it already running: callers may leave it up

    # -- subclass hooks -------------------------------------------------------------
    def prepare(self) -> None:
        """Write config into self.workdir and fill self.state (ports...) before spawn."""

    @abc.abstractmethod
    def command(self) -> list[str] | None:
        """argv of the daemon, which must stay in the foreground; None when the
        service has no daemon (prepare() brought it up; override is_running())."""

    def environment(self) -> dict[str, str]:
        """Extra environment variables for the daemon."""
        return {}

    @abc.abstractmethod
    def is_healthy(self) -> bool:
        """True once the daemon answers (HTTP health URL or TCP port)."""

    def matches_config(self) -> bool:
        """False when a running instance was started with other settings than this
        object's (start() then restarts it instead of reusing it)."""
        return True

    # -- state ----------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def save_state(self) -> None:
        """Persist self.state so other processes (CLI status, fixtures) find the ports."""
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, sort_keys=True))
        tmp.replace(self.state_file)

    def pid(self) -> int | None:
        """Pid of the running daemon (process-group leader), or None."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        started = self.state.get("pid_start_time") or self._load_state().get("pid_start_time")
        if _start_time(pid) is None or (started and _start_time(pid) != started):
            return None
        return pid

    def is_running(self) -> bool:
        """True when the daemon's process group still has live members."""
        pid = self.pid()
        return pid is not None and bool(group_members(pid))

    def own_pid(self, pid: int) -> None:
        """Record a process outside our process group (a daemon that detached
        itself): stop() kills it, also from another process (stop all)."""
        owned = self.state.setdefault("owned_pids", [])
        owned.append([pid, _start_time(pid)])
        self.save_state()

    def own_path(self, path: Path | str) -> None:
        """Record a file or dir we created outside the work dir: stop() removes it."""
        owned = self.state.setdefault("owned_paths", [])
        if str(path) not in owned:
            owned.append(str(path))
        self.save_state()

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> "LabService":
        """Start (or reuse a healthy running instance); raise ServiceError on failure."""
        if self.is_running():
            self.state = self._load_state()
            if self.is_healthy() and self.matches_config():
                self.reused = True
                return self
        self.stop()
        self.reused = False
        self.workdir.mkdir(parents=True)
        t0 = time.monotonic()
        try:
            self.prepare()
        except BaseException:
            self._release_quietly()  # a half-made mount or loop device must not stay
            raise
        argv = self.command()
        if argv is None:  # no daemon: prepare() did it all
            if not self.is_healthy():
                self._fail("not healthy after prepare")
        else:
            self._spawn(argv, t0)
        self.state["start_seconds"] = round(time.monotonic() - t0, 2)
        self.save_state()
        return self

    def _spawn(self, argv: list[str], t0: float) -> None:
        """Run the daemon detached (own session) and wait until it is healthy."""
        env = dict(os.environ, **self.environment())
        with open(self.log_file, "ab") as log:
            log.write(f"+ {' '.join(argv)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    argv, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise ServiceError(f"{self.name}: cannot run {argv[0]}: {exc}") from exc
        self.pid_file.write_text(f"{self._proc.pid}\n")
        self.state["pid_start_time"] = _start_time(self._proc.pid)
        self.save_state()
        deadline = t0 + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                self._fail(f"exited with status {self._proc.returncode} during start")
            if self.is_healthy():
                break
            if time.monotonic() > deadline:
                self._fail(f"not healthy after {self.start_timeout:.0f} s")
            time.sleep(0.1)

    def _fail(self, why: str) -> None:
        """Free what was made (processes, mounts), keep the work dir for inspection,
        raise with the log's tail."""
        self._release_quietly()
        raise ServiceError(
            f"lab service {self.name!r} {why}; log {self.log_file}:\n{tail(self.log_file)}")

    def _kill(self) -> None:
        """SIGTERM then SIGKILL the process group; reap our child if we spawned it."""
        pid = self.pid() or (self._proc.pid if self._proc else None)
        if pid is None:
            return
        for sig, wait in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while group_members(pid) and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)
            self._reap()
            if not group_members(pid):
                break
        if group_members(pid):
            raise ServiceError(f"{self.name}: process group {pid} survived SIGKILL")
        # A leader started by an exited CLI is now init's child: wait (bounded) for init
        # to reap the zombie so ``pgrep uwsgi`` is empty when stop() returns.
        deadline = time.monotonic() + 5.0
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.poll()

    def _owned(self, key: str) -> list[Any]:
        """Entries recorded under key, in memory and on disk (another process's)."""
        seen = list(self.state.get(key, []))
        seen += [e for e in self._load_state().get(key, []) if e not in seen]
        return seen

    def _kill_owned_pids(self) -> None:
        """SIGTERM, then SIGKILL, the recorded processes that are still the same ones."""
        pids = [int(pid) for pid, started in self._owned("owned_pids")
                if started and _start_time(int(pid)) == started]
        for sig, wait in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)):
            pids = [p for p in pids if alive(p)]
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while any(alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.02)
        if any(alive(p) for p in pids):
            raise ServiceError(f"{self.name}: pids {pids} survived SIGKILL")

    def _remove_owned_paths(self) -> None:
        for entry in self._owned("owned_paths"):
            path = Path(entry)
            if not path.is_absolute() or path == Path(path.anchor):
                continue
            if path.is_dir() and not path.is_symlink() and not os.path.ismount(path):
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink(missing_ok=True)

    def release(self) -> None:
        """Free everything the instance holds except its work dir: the process group,
        recorded processes and paths, mounts under the dir, loop devices backed in it."""
        self._kill()
        self._kill_owned_pids()
        problems = mounts.release_under(self.workdir)
        self._remove_owned_paths()
        if problems:
            raise ServiceError(f"{self.name}: " + "; ".join(problems))

    def _release_quietly(self) -> None:
        """release() on a failure path: the original error is the one to report."""
        try:
            self.release()
        except (ServiceError, OSError, subprocess.SubprocessError) as exc:
            if self.workdir.is_dir():
                with open(self.log_file, "a") as log:
                    log.write(f"release after failure: {exc}\n")

    def stop(self) -> None:
        """Kill the daemon's process group, wait for it, free mounts and loop devices,
        remove the work dir (never through a mount that would not go away)."""
        self.release()
        if self.workdir.exists():
            left = mounts.mounts_under(self.workdir)
            if left:
                raise ServiceError(f"{self.name}: still mounted {[m[0] for m in left]}: "
                                   f"not removing {self.workdir}")
            shutil.rmtree(self.workdir)
        self._proc = None
        self.state = {}

    # -- faults ---------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL the daemon's process group, as a crash would. Config, data and
        state stay, so restart() brings the same service back on the same port."""
        pid = self.pid()
        if pid is None:
            raise ServiceError(f"{self.name}: not running")
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5.0
        while group_members(pid) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        self._reap()
        if group_members(pid):
            raise ServiceError(f"{self.name}: process group {pid} survived SIGKILL")

    def pause(self) -> list[int]:
        """SIGSTOP the daemon's whole process group, as a hang (its sockets stay
        open, nothing answers); returns the pids. Always ``resume(pids)`` after."""
        pid = self.pid()
        if pid is None:
            raise ServiceError(f"{self.name}: not running")
        return stop_processes(group_members(pid), self.name)

    def resume(self, pids: list[int]) -> None:
        """SIGCONT what ``pause`` stopped."""
        continue_processes(pids)

    def restart(self) -> "LabService":
        """Run the daemon again on what prepare() made before (same port, data), and
        wait until it is healthy; a running one is killed first."""
        self.state = self._load_state() or self.state
        if not self.state or not self.workdir.is_dir():
            raise ServiceError(f"{self.name}: never started (no state): use start()")
        if self.pid() is not None:
            self.kill()
        argv = self.command()
        if argv is None:
            raise ServiceError(f"{self.name}: no daemon to restart")
        t0 = time.monotonic()
        self._spawn(argv, t0)
        self.state["restart_seconds"] = round(time.monotonic() - t0, 2)
        self.save_state()
        return self

    def status(self) -> dict[str, Any]:
        """Summary for ``python -m tools.lab status``."""
        return {"name": self.name, "running": self.is_running(), "workdir": str(self.workdir),
                "log": str(self.log_file), **self._load_state()}


def stop_leftovers(run_dir: Path | None = None) -> list[str]:
    """SIGKILL the process group of every service dir still under run_dir and remove it.

    The safety net of ``python -m tools.lab stop all``: also catches services the CLI
    does not know (renamed instances such as a second Ceph, crashed starts).
    """
    run_dir = Path(run_dir or RUN_DIR)
    names = sorted(p.name for p in run_dir.iterdir() if p.is_dir()) if run_dir.is_dir() else []
    errors = []
    for name in names:
        svc = _Leftover(run_dir, name=name)
        svc.stop_timeout = 0.0  # type: ignore[misc]  # straight to SIGKILL
        try:  # also recorded pids/paths, mounts and loop devices (state.json, scan)
            svc.stop()
        except ServiceError as exc:  # keep going: free as much as possible
            errors.append(str(exc))
    if errors:
        raise ServiceError("; ".join(errors))
    return names


class _Leftover(LabService):
    """Whatever a dir under the run dir holds, known only by its pid file and state."""

    def command(self) -> list[str] | None:
        return None

    def is_healthy(self) -> bool:
        return False
