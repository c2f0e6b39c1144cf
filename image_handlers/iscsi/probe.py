"""Ask a LUN what it is, with bounded waits: is the portal there, how big is the
LUN, and which LUN is it (its SCSI unit serial, read through libiscsi)."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess

from image_handlers.exceptions import Refused
from image_handlers.iscsi.lun import LunSpec

_SERIAL = re.compile(r'Unit Serial Number:\[(.*)\]')


@dataclasses.dataclass(frozen=True)
class LunInfo:
    size: int
    serial: str | None

    def identity(self, spec: LunSpec) -> str:
        """What a verdict is kept for: this LUN of this target, this serial, size."""
        return f'{spec.url}#serial={self.serial or "-"}#size={self.size}'


def reachable(spec: LunSpec, timeout: float) -> None:
    host, _, port = spec.portal.rpartition(':')
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as exc:
        raise Refused(f'iscsi: portal {spec.portal} did not accept a connection within '
                      f'{timeout:.0f} s ({exc.strerror or exc})') from None


def probe(spec: LunSpec, timeout: float) -> LunInfo:
    """Size (qemu's initiator) and serial (libiscsi's iscsi-inq); Refused with the
    target's own words for a wrong IQN, LUN or CHAP secret."""
    reachable(spec, timeout)
    argv = ['qemu-img', 'info', '--output=json', *spec.objects(), '--image-opts',
            spec.image_opts()]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Refused(f'iscsi: {spec.url} did not answer within {timeout:.0f} s') from None
    if proc.returncode != 0:
        raise Refused(f'iscsi: cannot open {spec.url}: {_last_line(proc.stderr)} (wrong '
                      f'IQN, LUN or CHAP secret?)')
    size = int(json.loads(proc.stdout)['virtual-size'])
    return LunInfo(size=size, serial=_serial(spec, timeout))


def _serial(spec: LunSpec, timeout: float) -> str | None:
    """VPD page 0x80 (128); CHAP goes through libiscsi's environment variables,
    never the command line."""
    env = dict(os.environ)
    if spec.user and spec.secret_file:
        with open(spec.secret_file, encoding='utf-8') as f:
            env.update(LIBISCSI_CHAP_USERNAME=spec.user,
                       LIBISCSI_CHAP_PASSWORD=f.read())
    try:
        proc = subprocess.run(
            ['iscsi-inq', '-e', '1', '-c', '128', spec.url],
            capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = _SERIAL.search(proc.stdout) if proc.returncode == 0 else None
    return found.group(1).strip() or None if found else None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else 'no error text'
