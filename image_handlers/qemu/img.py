"""Small wrappers of ``qemu-img`` (qemu-utils): every call bounded, every failure a
clear error naming the disk and qemu's own words.

qemu-img takes qemu's image locks (OFD locks), so a disk a running guest has open
cannot be rebased or written here: qemu refuses with "Failed to get "write" lock",
which is the guard against two writers on one qcow2.
"""
from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import time
from typing import Any, Callable

from image_handlers import exceptions

QEMU_IMG = 'qemu-img'
_PROGRESS = re.compile(rb'\((\d+(?:\.\d+)?)/100%\)')


def _run(argv: list[str], what: str, timeout: float) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise exceptions.ConfigError(
            f'{QEMU_IMG} is not installed: install qemu-utils') from None
    except subprocess.TimeoutExpired:
        raise exceptions.SourceError(f'{what}: qemu-img did not finish within '
                                     f'{timeout:.0f} s') from None
    if proc.returncode != 0:
        raise exceptions.ImageHandlerError(
            f'{what}: qemu-img failed: {proc.stderr.decode(errors="replace").strip()}')
    return proc.stdout.decode(errors='replace')


def info(path: str, timeout: float = 60) -> dict[str, Any]:
    """``qemu-img info --output=json`` of one file (format probed: only call it on
    files a handler made, never on untrusted image data)."""
    return json.loads(_run([QEMU_IMG, 'info', '--output=json', '-U', path],
                           f'inspecting {path}', timeout))


def fully_allocated(path: str, timeout: float = 60) -> bool:
    """True when the qcow2 itself holds every block (data or zero), so its backing
    file is never read again. The backing file is not opened to tell."""
    alone = 'json:' + json.dumps({'driver': 'qcow2', 'backing': None,
                                  'file': {'driver': 'file', 'filename': path}})
    extents = json.loads(_run([QEMU_IMG, 'map', '--output=json', '-U', alone],
                              f'mapping {path}', timeout))
    return all(e.get('present') for e in extents)


def drop_backing(path: str, timeout: float = 60) -> None:
    """Forget the backing file of a qcow2 that holds every block itself (see
    ``fully_allocated``): no data moves, the backing file is not opened."""
    _run([QEMU_IMG, 'rebase', '-u', '-f', 'qcow2', '-b', '', path],
         f'dropping the backing file of {path}', timeout)


def in_use(path: str, timeout: float = 60) -> bool:
    """True when another process (a guest's qemu) holds qemu's write lock on the
    disk: ``qemu-img info`` without -U then fails to get its shared lock."""
    try:
        proc = subprocess.run([QEMU_IMG, 'info', path], capture_output=True,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        raise exceptions.ConfigError(
            f'{QEMU_IMG} is not installed: install qemu-utils') from None
    return proc.returncode != 0 and b'lock' in proc.stderr


def create_overlay(path: str, backing: str, backing_format: str,
                   size: int | None = None, timeout: float = 60,
                   open_backing: bool = True) -> None:
    """A new qcow2 file backed by ``backing`` (format stated, never probed).
    ``open_backing=False`` (with ``size``) records the backing file without opening
    it: a remote LUN already probed need not be asked again."""
    argv = [QEMU_IMG, 'create', '-q', '-f', 'qcow2', '-F', backing_format,
            '-b', backing, *([] if open_backing else ['-u']), path]
    if size is not None:
        argv.append(str(size))
    _run(argv, f'creating overlay {path} on {backing}', timeout)


def _io_counter(pid: int) -> int | None:
    """Bytes the process has read and written so far (/proc/PID/io rchar + wchar,
    all its threads): moves whenever qemu-img does I/O, also between the whole
    percents its -p output shows (1 % of a 100 GiB disk is a long time)."""
    try:
        with open(f'/proc/{pid}/io') as f:
            fields = dict(line.split(':', 1) for line in f if ':' in line)
        return int(fields['rchar']) + int(fields['wchar'])
    except (OSError, KeyError, ValueError):
        return None


def _stop(proc: subprocess.Popen, grace: float = 3.0) -> bool:
    """SIGTERM, then SIGKILL; True once it ended. A process blocked in the kernel
    on a hung file system (a FUSE request already sent) ends only when that
    request is answered: False then, and it is left to end by itself."""
    proc.terminate()
    try:
        proc.wait(grace)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
    try:
        proc.wait(grace)
        return True
    except subprocess.TimeoutExpired:
        return False


def make_standalone(path: str, backing_format: str,
                    progress: Callable[[float], None] | None = None,
                    cancelled: Callable[[], bool] | None = None,
                    poll: float = 0.2, objects: tuple[str, ...] = (),
                    stall_timeout: float | None = None,
                    backing: str = '') -> None:
    """Copy every block the overlay still reads from its backing file into it and
    drop the backing file (``qemu-img rebase -b ''``, safe mode). Rerunning it after
    an interruption resumes: blocks already copied are not read again.

    ``stall_timeout``: qemu-img has no timeout of its own, so a backing file on a
    hung server (a stopped Gluster brick, a stuck NFS) would hold it for ever. When
    it neither reports progress nor reads or writes a byte for that many seconds it
    is stopped and SourceError says so (the overlay keeps what was copied: it
    still has its backing file, nothing is published)."""
    argv = [QEMU_IMG, 'rebase', *objects, '-p', '-f', 'qcow2', '-F', backing_format,
            '-b', '', path]
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise exceptions.ConfigError(
            f'{QEMU_IMG} is not installed: install qemu-utils') from None
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    last_io, last_move = _io_counter(proc.pid), time.monotonic()
    gave_up = False
    try:
        while proc.poll() is None:
            if cancelled is not None and cancelled():
                proc.terminate()
                proc.wait(30)
                raise exceptions.CopyCancelled(f'fill of {path} cancelled; blocks '
                                               f'copied so far are kept')
            for _key, _ in sel.select(poll):
                chunk = proc.stdout.read() or b''
                found = _PROGRESS.findall(chunk)
                if found:
                    last_move = time.monotonic()
                    if progress is not None:
                        progress(float(found[-1]) / 100)
            now_io = _io_counter(proc.pid)
            if now_io != last_io:
                last_io, last_move = now_io, time.monotonic()
            if stall_timeout and time.monotonic() - last_move > stall_timeout:
                ended, gave_up = _stop(proc), True
                source = backing or 'its backing file'
                raise exceptions.SourceError(
                    f'making {path} independent of {source} stalled: qemu-img read '
                    f'and wrote nothing for {stall_timeout:g} s ([image_handlers] '
                    f'read_timeout; the server behind {source} hangs?), so it was '
                    + ('stopped' if ended else
                       f'sent SIGKILL (pid {proc.pid} is blocked in the kernel on '
                       f'that file system and ends when it answers)')
                    + f'; {path} still has its backing file')
    finally:
        sel.close()
        if proc.poll() is None and not gave_up:
            _stop(proc)
    err = proc.stderr.read().decode(errors='replace').strip()
    if proc.returncode != 0:
        hint = (' (a running guest has the disk open: the fill must go through '
                'that guest\'s qemu)' if 'lock' in err else '')
        raise exceptions.ImageHandlerError(
            f'making {path} independent of its backing file failed{hint}: {err}')
