"""Signing certificates from the key manager (castellan; Barbican in production).

cursive's own ``get_verifier`` and ``verify_certificate`` read certificates
through ``castellan.key_manager.API()`` on oslo.config's global CONF; this module
does the same reads with the configuration the chain was built with (inside Nova
that is the same CONF, so ``[key_manager]`` and ``[barbican]`` of nova.conf apply
unchanged), under a bounded wait: a key manager or Keystone that hangs becomes a
clear error after ``key_manager_timeout`` seconds, never a boot that hangs. The
chain of trust is then checked by cursive's CertificateVerificationContext,
exactly as ``cursive.certificate_utils.verify_certificate`` checks it.

A certificate read is kept for ``certificate_cache_seconds`` per process, keyed
by who read it (project and user) and its id: a Barbican read costs two round
trips (~25-40 ms measured), as much again as the O(1) clone it guards. Barbican
secrets cannot be changed, only deleted; the lifetime bounds how long a deleted
certificate is still accepted. Refusals are never kept.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging

from image_handlers import exceptions

LOG = logging.getLogger(__name__)

_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                              thread_name_prefix='key-manager')
_CACHE: dict[tuple, tuple[float, Any]] = {}     # (project, user, uuid) -> (at, cert)
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 256


class CertificateSource:
    """Reads X.509 certificates by key manager id, as the request's user.
    ``context`` makes the castellan context on first use (so a request that needs
    no certificate never authenticates for one)."""

    def __init__(self, conf: cfg.ConfigOpts, context: Callable[[], Any] | None,
                 timeout: float, cache_seconds: float = 0.0) -> None:
        self.conf = conf
        self._make_context = context
        self._context: Any = None
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._api = None

    @property
    def context(self) -> Any:
        if self._context is None and self._make_context is not None:
            self._context = self._make_context()
        return self._context

    def _key_manager(self):
        if self._api is None:
            from castellan import key_manager
            self._api = key_manager.API(self.conf)
        return self._api

    def get(self, uuid: str, what: str = 'signing certificate'):
        """The certificate ``uuid`` (a cryptography x509.Certificate); Untrusted
        when the key manager has none, or does not answer in time."""
        if self.context is None:
            raise exceptions.Untrusted(
                f'cannot read {what} {uuid}: no credentials for the key manager '
                f'(inside Nova the request context gives them; on the command line '
                f'the [glance] credentials of nova.conf do)')
        key = (getattr(self.context, 'project_id', None),
               getattr(self.context, 'user_id', None), uuid)
        cached = self._cached(key)
        if cached is not None:
            return cached
        certificate = self._read(uuid, what)
        if self.cache_seconds > 0:
            with _CACHE_LOCK:
                if len(_CACHE) >= _CACHE_MAX:
                    _CACHE.pop(min(_CACHE, key=lambda k: _CACHE[k][0]))
                _CACHE[key] = (time.monotonic(), certificate)
        return certificate

    def _cached(self, key: tuple):
        if self.cache_seconds <= 0:
            return None
        with _CACHE_LOCK:
            entry = _CACHE.get(key)
            if entry is None:
                return None
            if time.monotonic() - entry[0] > self.cache_seconds:
                del _CACHE[key]
                return None
            return entry[1]

    def _read(self, uuid: str, what: str):
        future = _POOL.submit(self._fetch, uuid)
        try:
            managed = future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            raise exceptions.Untrusted(
                f'the key manager did not answer within {self.timeout:g} s for '
                f'{what} {uuid} ([image_handlers] key_manager_timeout): check that '
                f'Barbican and Keystone are up ([key_manager], [barbican] in '
                f'nova.conf)') from None
        from castellan.common import exception as km_exception
        if isinstance(managed, km_exception.ManagedObjectNotFoundError):
            raise exceptions.Untrusted(
                f'{what} {uuid} is not in the key manager (or not visible to the '
                f'requesting project): upload it to Barbican, or fix the image\'s '
                f'img_signature_certificate_uuid')
        if isinstance(managed, Exception):
            raise exceptions.Untrusted(
                f'the key manager could not give {what} {uuid}: '
                f'{type(managed).__name__}: {managed}') from managed
        return self._to_x509(uuid, managed, what)

    def _fetch(self, uuid: str):
        """Runs on a worker thread: the result or the exception, never raised here
        (a timed-out call is abandoned and must not log a traceback)."""
        try:
            return self._key_manager().get(self.context, uuid)
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            return exc

    @staticmethod
    def _to_x509(uuid: str, managed, what: str):
        from castellan.common.objects import x_509
        from cryptography import x509
        if not isinstance(managed, x_509.X509):
            raise exceptions.Untrusted(
                f'{what} {uuid} in the key manager is a {type(managed).__name__}, '
                f'not an X.509 certificate')
        try:
            return x509.load_der_x509_certificate(managed.get_encoded())
        except ValueError as exc:
            raise exceptions.Untrusted(f'{what} {uuid} does not parse: {exc}') from None

    def check_trusted(self, uuid: str, certificate, trusted: Sequence[str]) -> None:
        """Untrusted unless ``certificate`` chains to one of ``trusted`` (ids of
        certificates in the key manager), checked by cursive as Nova checks it."""
        from cursive import certificate_utils
        from cursive import exception as cursive_exception
        roots = []
        for trusted_id in trusted:
            try:
                roots.append((trusted_id, self.get(trusted_id, 'trusted certificate')))
            except exceptions.Untrusted as exc:
                LOG.warning('skipping trusted certificate %s: %s', trusted_id, exc)
        context = certificate_utils.CertificateVerificationContext(roots)
        context.update(certificate)
        try:
            context.verify()
        except cursive_exception.SignatureVerificationError as exc:
            raise exceptions.Untrusted(
                f'signing certificate {uuid} is not trusted: {exc} (trusted '
                f'certificates: {", ".join(trusted)})') from None
