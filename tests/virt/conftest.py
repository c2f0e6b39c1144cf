"""Fixtures for the lab's hypervisor: a private libvirtd (tools/lab/libvirt.py) and
the lab's TCG guest (tools/lab/guest.py), real, as root.

The libvirt service starts once per session in the lab run dir (IH_LAB_RUN_DIR keeps
runs apart) and stops at the end; every domain a test starts is destroyed after it.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import uuid
from pathlib import Path

import libvirt
import pytest

from tools.lab.guest import Guest
from tools.lab.libvirt import LibvirtService

MiB = 1 << 20


def disk_bytes(size: int, seed: int = 1) -> bytes:
    """Deterministic, never-zero test data (no cluster is all zeros)."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha512(f'{seed}:{i}'.encode()).digest() * 1024  # 64 KiB
        i += 1
    return bytes(out[:size])


def qemu_img(*args: str) -> str:
    return subprocess.run(['qemu-img', *args], check=True, capture_output=True,
                          text=True).stdout


def image_info(path: Path) -> dict:
    """qemu-img info -U (shared lock: works while qemu holds the image)."""
    return json.loads(qemu_img('info', '-U', '--output=json', str(path)))


def own_data_ranges(path: Path) -> list[tuple[int, int]]:
    """(start, end) of the ranges whose data the image itself holds (depth 0)."""
    extents = json.loads(qemu_img('map', '-U', '--output=json', str(path)))
    return [(e['start'], e['start'] + e['length']) for e in extents
            if e['depth'] == 0 and e['data']]


def covered(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    """True when the ranges cover [start, end) with no gap."""
    pos = start
    for a, b in sorted(ranges):
        if a > pos:
            break
        pos = max(pos, b)
    return pos >= end


@pytest.fixture(scope='session')
def libvirt_events():
    """libvirt's default event loop in a daemon thread (domain events need it, and
    it must be registered before the connection is opened)."""
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, name='libvirt-events', daemon=True).start()


@pytest.fixture(scope='session')
def virt_lab():
    svc = LibvirtService().start()
    yield svc
    svc.stop()


@pytest.fixture(scope='session')
def virt_conn(virt_lab, libvirt_events):
    conn = virt_lab.connect()
    yield conn
    try:
        conn.close()
    except libvirt.libvirtError:
        pass


@pytest.fixture(scope='session')
def guest():
    return Guest().build()


@pytest.fixture
def boot(virt_lab, virt_conn):
    """boot(xml) -> a running transient domain, destroyed after the test."""
    started = []

    def start(xml: str):
        dom = virt_lab.create_domain(xml, virt_conn)
        started.append(dom)
        return dom

    yield start
    for dom in started:
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass  # powered off: a transient domain is gone


@pytest.fixture
def vm_name(request):
    return f'ih-{request.node.name[:40]}-{uuid.uuid4().hex[:6]}'.replace('[', '-').replace(']', '')
