"""The running guest that has a disk open, through libvirt: find it, and stream its
disk's backing chain into the disk (block pull) inside that guest's own qemu, the
only process that may write a qcow2 a guest has open."""
from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from typing import Callable

from image_handlers import exceptions

try:  # libvirt-python (PyPI, built against Debian's libvirt)
    import libvirt
except ImportError:  # pragma: no cover - reported when used
    libvirt = None


def _connect(uri: str):
    if libvirt is None:
        raise exceptions.ConfigError('libvirt-python is missing: a fill while a guest '
                                     'runs goes through libvirt (pip install '
                                     'libvirt-python)')
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise exceptions.SourceError(f'libvirt at {uri}: {exc}') from None


def find(uri: str, disk: str) -> tuple[str, str] | None:
    """(domain name, target dev) of the running domain whose disk is ``disk``."""
    conn = _connect(uri)
    try:
        real = os.path.realpath(disk)
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            for node in ET.fromstring(dom.XMLDesc(0)).iter('disk'):
                source, target = node.find('source'), node.find('target')
                path = source.get('file') if source is not None else None
                if path and target is not None and os.path.realpath(path) == real:
                    return dom.name(), target.get('dev')
        return None
    finally:
        conn.close()


def block_pull(uri: str, domain: str, dev: str, bandwidth: int,
               progress: Callable[[int, int], None], cancelled: Callable[[], bool],
               poll: float = 0.2) -> None:
    """Pull the backing chain of ``dev`` into it at ``bandwidth`` bytes/s (0: no
    limit) and wait for the job to end; the disk then has no backing file."""
    conn = _connect(uri)
    try:
        dom = conn.lookupByName(domain)
        flags = libvirt.VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES
        if not dom.blockJobInfo(dev, 0):
            dom.blockPull(dev, bandwidth, flags)
        while True:
            info = dom.blockJobInfo(dev, 0)
            if not info:
                return
            progress(int(info.get('cur', 0)), int(info.get('end', 0)))
            if cancelled():
                dom.blockJobAbort(dev, 0)
                raise exceptions.CopyCancelled(
                    f'block pull of {dev} in {domain} cancelled; what was pulled stays')
            time.sleep(poll)
    except libvirt.libvirtError as exc:
        raise exceptions.SourceError(f'block pull of {dev} in {domain}: {exc}') from None
    finally:
        conn.close()
