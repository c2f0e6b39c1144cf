"""One RADOS connection per cluster per process, with bounded waits.

Nova opens a new RADOS connection for every "is this image cloneable" check; we
connect once per (ceph.conf, user) and keep the fsid, so deciding costs no round trip
to the monitors. Connect and operation timeouts are set on the client so an
unreachable cluster is a clear error after a bounded wait, not a hung boot.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import threading
import time
from typing import Iterator

from oslo_config import cfg
from oslo_log import log as logging

from image_handlers import conf as ih_conf
from image_handlers import exceptions

LOG = logging.getLogger(__name__)

try:  # Debian's python3-rados/python3-rbd (PyPI has none); linked into the venv
    import rados
    import rbd
except ImportError:  # pragma: no cover - reported by ClusterSettings.connect
    rados = rbd = None


class ClusterUnavailable(exceptions.SourceError):
    """The cluster could not be reached (or the bindings are missing)."""


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    ceph_conf: str
    user: str
    keyring: str | None = None
    connect_timeout: int = 10
    op_timeout: int = 30

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, ceph_conf: str | None = None
                  ) -> 'ClusterSettings':
        """Our options, defaulting to Nova's [libvirt] ones so nothing is set twice."""
        group, libvirt = conf[ih_conf.GROUP], conf.libvirt
        return cls(
            ceph_conf=(ceph_conf or group.rbd_ceph_conf or libvirt.images_rbd_ceph_conf
                       or '/etc/ceph/ceph.conf'),
            user=group.rbd_user or libvirt.rbd_user or 'admin',
            keyring=group.rbd_keyring,
            connect_timeout=group.rbd_connect_timeout,
            op_timeout=group.rbd_op_timeout)

    def describe(self) -> str:
        return f'{self.ceph_conf} as client.{self.user}'


class Cluster:
    """A connected cluster: its fsid, and I/O contexts on demand."""

    def __init__(self, settings: ClusterSettings):
        self.settings = settings
        self._rados = self._connect()
        self.fsid = self._rados.get_fsid()
        # Set once this client is not to be used again: the cluster shut it out
        # (ESHUTDOWN: blocklisted, e.g. when another client broke an image lock it
        # held while an OSD was down), or an operation timed out (measured: after
        # an OSD or monitor came back, such a client kept timing out while a new
        # one worked at once). get_cluster then connects anew.
        self.shut_out: str | None = None

    def note_error(self, exc: BaseException) -> None:
        """Retire this connection when ``exc`` (or what caused it) is a shut-out
        or a timeout."""
        seen = 0
        while exc is not None and seen < 5:
            code = abs(getattr(exc, 'errno', None) or 0)
            if code in (errno.ESHUTDOWN, errno.ETIMEDOUT):
                if self.shut_out is None:
                    LOG.warning('Ceph cluster %s: %s; the next request connects '
                                'again', self.fsid, exc)
                self.shut_out = str(exc)
                return
            exc, seen = exc.__cause__ or exc.__context__, seen + 1

    def _connect(self):
        s = self.settings
        if rados is None:
            raise ClusterUnavailable(
                'the rados/rbd Python bindings are not importable: install Debian\'s '
                'python3-rados and python3-rbd (tools/install-deps.sh links them)')
        if not os.path.exists(s.ceph_conf):
            raise ClusterUnavailable(f'ceph.conf {s.ceph_conf} does not exist')
        options = {'client_mount_timeout': str(s.connect_timeout),
                   'rados_mon_op_timeout': str(s.op_timeout),
                   'rados_osd_op_timeout': str(s.op_timeout)}
        if s.keyring:
            options['keyring'] = s.keyring
        client = rados.Rados(conffile=s.ceph_conf, rados_id=s.user, conf=options)
        try:
            client.connect(timeout=s.connect_timeout)
        except rados.Error as exc:
            client.shutdown()
            raise ClusterUnavailable(
                f'cannot connect to Ceph ({s.describe()}) within '
                f'{s.connect_timeout} s: {exc}; check that its monitors are up '
                f'(ceph -s) and reachable from this host')
        return client

    @contextlib.contextmanager
    def ioctx(self, pool: str) -> Iterator['rados.Ioctx']:
        try:
            ctx = self._rados.open_ioctx(pool)
        except rados.ObjectNotFound:
            raise exceptions.SourceError(
                f'pool {pool!r} does not exist in cluster {self.fsid}')
        except rados.Error as exc:
            raise ClusterUnavailable(f'cannot open pool {pool!r}: {exc}')
        try:
            yield ctx
        except BaseException as exc:
            self.note_error(exc)
            raise
        finally:
            ctx.close()

    def close(self) -> None:
        self._rados.shutdown()


_clusters: dict[ClusterSettings, Cluster] = {}
_failures: dict[ClusterSettings, tuple[float, ClusterUnavailable]] = {}
_lock = threading.Lock()
# Seconds a failed connect is remembered: long enough for the rest of the request
# that waited for it (several locations ask), short enough that a request made once
# the monitors are back connects (30 s failed every request for 30 s after that).
FAILURE_MEMORY = 3.0


def get_cluster(settings: ClusterSettings) -> Cluster:
    """The process-wide connection for ``settings`` (one connect, one fsid lookup).

    A failed connect is remembered for FAILURE_MEMORY seconds, so a chain that asks
    several times in one request waits for the monitors once, not once per location.
    """
    with _lock:
        cached = _clusters.get(settings)
        if cached is not None and cached.shut_out is None:
            return cached
        if cached is not None:      # shut out by the cluster: a new client (the old
            del _clusters[settings]  # one is not closed: another thread may use it)
        failed = _failures.get(settings)
        if failed and time.monotonic() - failed[0] < FAILURE_MEMORY:
            raise failed[1]
        try:
            cluster = Cluster(settings)
        except ClusterUnavailable as exc:
            _failures[settings] = (time.monotonic(), exc)
            raise
        _clusters[settings] = cluster
        LOG.info('connected to Ceph cluster %s (%s)', cluster.fsid, settings.describe())
        return cluster


def forget_failures() -> None:
    """Let the next request try an unreachable cluster again at once."""
    with _lock:
        _failures.clear()
