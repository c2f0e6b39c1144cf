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


def make_standalone(path: str, backing_format: str,
                    progress: Callable[[float], None] | None = None,
                    cancelled: Callable[[], bool] | None = None,
                    poll: float = 0.2, objects: tuple[str, ...] = ()) -> None:
    """Copy every block the overlay still reads from its backing file into it and
    drop the backing file (``qemu-img rebase -b ''``, safe mode). Rerunning it after
    an interruption resumes: blocks already copied are not read again."""
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
                if found and progress is not None:
                    progress(float(found[-1]) / 100)
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode(errors='replace').strip()
    if proc.returncode != 0:
        hint = (' (a running guest has the disk open: the fill must go through '
                'that guest\'s qemu)' if 'lock' in err else '')
        raise exceptions.ImageHandlerError(
            f'making {path} independent of its backing file failed{hint}: {err}')
