"""Fixtures of the copy engine tests: loopback fault servers, images, tmpfs mounts."""
from __future__ import annotations

import os
import random
import subprocess
import tempfile

import pytest

from image_handlers.copy import CopyOptions
from tests.copy.fault_server import FaultServer

MiB = 1 << 20


def make_image(size: int, seed: int = 1, zero_fraction: float = 0.5) -> bytes:
    """Deterministic image: 64 KiB runs of random bytes or zeros."""
    rng = random.Random(seed)
    out = bytearray(size)
    for pos in range(0, size, 64 << 10):
        if rng.random() >= zero_fraction:
            n = min(64 << 10, size - pos)
            out[pos:pos + n] = rng.randbytes(n)
    return bytes(out)


@pytest.fixture
def servers():
    """Factory of FaultServers, all stopped at teardown."""
    started: list[FaultServer] = []

    def start(data: bytes, path: str = '/image', tls=None) -> FaultServer:
        server = FaultServer(data, path, tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def image() -> bytes:
    return make_image(6 * MiB + 12345, seed=7)


@pytest.fixture
def options() -> CopyOptions:
    """Small buffers and checkpoints so the tests exercise many of both; no
    backoff wait."""
    return CopyOptions(buffer_size=256 << 10, checkpoint_interval=512 << 10,
                       retry_backoff=0.0, retries=3, progress_interval=0.01,
                       connect_timeout=5.0, read_timeout=20.0)


@pytest.fixture
def tmpfs():
    """Factory mounting a tmpfs (``size``, optionally read-only); unmounted at
    teardown. Needs root, like the rest of this suite's file system tests."""
    mounts: list[str] = []

    def mount(size: str = '1m', read_only: bool = False, fstype: str = 'tmpfs') -> str:
        """``fstype`` 'ramfs' gives a file system without O_DIRECT (and no size)."""
        path = tempfile.mkdtemp(prefix=f'ih-{fstype}-')
        opts = ','.join(([f'size={size}'] if fstype == 'tmpfs' else [])
                        + (['ro'] if read_only else [])) or 'defaults'
        proc = subprocess.run(['mount', '-t', fstype, '-o', opts, fstype, path],
                              capture_output=True, text=True)
        if proc.returncode:
            os.rmdir(path)
            pytest.fail(f'cannot mount a {fstype} (the suite runs as root, as CI does): '
                        f'{proc.stderr.strip()}')
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(['umount', '-l', path], check=False)
        os.rmdir(path)


@pytest.fixture(scope='session')
def tls_cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (cert path, key path)."""
    d = tmp_path_factory.mktemp('tls')
    cert, key = str(d / 'cert.pem'), str(d / 'key.pem')
    try:
        subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
                        '-keyout', key, '-out', cert, '-days', '2',
                        '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f'openssl cannot make a test certificate (tools/install-deps.sh '
                    f'installs openssl): {exc}')
    return cert, key
