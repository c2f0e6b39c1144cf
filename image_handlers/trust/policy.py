"""What this host demands before an image's bytes become a disk.

Nova's own ``[glance]`` options decide whether signatures are checked, as they
decide it for Nova's download: ``verify_glance_signatures``, and the instance's
trusted certificates (or ``default_trusted_certificate_ids`` with
``enable_certificate_validation``). Ours say how long the key manager may take,
and whether an image without any recorded hash may be used at all.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from oslo_config import cfg

trust_opts = [
    cfg.FloatOpt(
        'key_manager_timeout', default=30.0, min=0.1,
        help='Seconds to wait for the key manager (Barbican, through castellan) '
             'to give a signing or trusted certificate. A key manager or Keystone '
             'that does not answer in time fails the disk with that reason, '
             'instead of hanging the boot.'),
    cfg.FloatOpt(
        'certificate_cache_seconds', default=300.0, min=0.0,
        help='Seconds a signing or trusted certificate read from the key manager is '
             'kept in memory, per reader (project and user) and certificate id, so '
             'repeated disks of a signed image do not pay the key manager\'s round '
             'trips. Barbican certificates cannot change, only be deleted: this is '
             'how long a deleted certificate may still be accepted. 0 reads it '
             'every time.'),
]

# Nova's [glance] options for signatures, for the command line without Nova (inside
# Nova they are Nova's own: registered only when missing).
nova_glance_opts = [
    cfg.BoolOpt('verify_glance_signatures', default=False,
                help='Verify image signatures (Nova\'s option): a signed image is '
                     'provided only when its bytes carry its img_signature, on '
                     'every path, and an unsigned image is refused.'),
    cfg.BoolOpt('enable_certificate_validation', default=False,
                help='Check the signing certificate against trusted certificates '
                     '(Nova\'s option; deprecated there, kept for its meaning).'),
    cfg.ListOpt('default_trusted_certificate_ids', default=[],
                help='Trusted certificate ids used when an instance names none and '
                     'enable_certificate_validation is on (Nova\'s option).'),
]


@dataclasses.dataclass(frozen=True)
class TrustPolicy:
    allow_unverified: bool = False
    verify_signatures: bool = False
    trusted_certs: tuple[str, ...] = ()
    # Signatures checked but no trusted certificates: Nova refuses (it cannot
    # validate the certificate); so do we.
    require_certificate_validation: bool = False
    key_manager_timeout: float = 30.0
    certificate_cache_seconds: float = 0.0

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts,
                  trusted_certs: Sequence[str] | None = None) -> 'TrustPolicy':
        """As Nova's ``API._get_verifier`` reads its configuration."""
        glance, group = conf.glance, conf.image_handlers
        validate = glance.enable_certificate_validation
        trusted = tuple(trusted_certs or ())
        if not trusted and validate and glance.default_trusted_certificate_ids:
            trusted = tuple(glance.default_trusted_certificate_ids)
        return cls(allow_unverified=group.allow_unverified_copies,
                   verify_signatures=bool(glance.verify_glance_signatures or trusted),
                   trusted_certs=trusted,
                   require_certificate_validation=bool(validate and not trusted),
                   key_manager_timeout=group.key_manager_timeout,
                   certificate_cache_seconds=group.certificate_cache_seconds)
