"""Image signing as Glance's docs describe it, for tests against the lab's Barbican.

https://docs.openstack.org/glance/latest/user/signature.html: the signer hashes the
image data with ``img_signature_hash_method``, signs it with the private key of a
certificate stored in the key manager, and sets four image properties:
``img_signature`` (base64), ``img_signature_hash_method`` (SHA-224/256/384/512),
``img_signature_key_type`` (``RSA-PSS``, ``ECC_SECP384R1``, ``ECC_SECP521R1``, ``DSA``)
and ``img_signature_certificate_uuid``. Nova checks them with cursive
(``signature_utils.get_verifier(context, uuid, hash_method, signature, key_type)``, then
``update(data)`` + ``verify()``) and, with ``[glance] enable_certificate_validation``,
``certificate_utils.verify_certificate`` against trusted CA certificates.

Matches cursive exactly: RSA-PSS is ``PSS(mgf=MGF1(<same hash>),
salt_length=PSS.MAX_LENGTH)`` (cursive's ``create_verifier_for_pss``), ECC is ``ECDSA(hash)``.
Certificates: ``make_ca()`` (basicConstraints CA=True, keyUsage keyCertSign + cRLSign)
and ``make_signing_cert(ca_cert, ca_key)`` (CA=False, keyUsage digitalSignature), so
``verify_certificate(ctx, signer_uuid, [ca_uuid])`` finds a chain.

Storing (castellan, barbican backend, as a keystone user): ``configure_castellan(conf,
keystone)`` sets castellan's options (``[key_manager] backend = barbican``,
``[barbican] auth_endpoint``, ``barbican_endpoint_type = public``, ...; Barbican's URL
comes from the catalog) on an oslo.config ConfigOpts -- cursive calls
``castellan.key_manager.API()`` with the GLOBAL ``cfg.CONF``, so give it that one there
-- and returns an undo callable. ``request_context(keystone, user, project)`` is an
oslo.context RequestContext(auth_token, project_id) like the one Nova hands cursive;
``store_certificate(cert, context, conf)`` stores castellan's ``X509`` (PEM in Barbican,
LAB-NOTES) and returns its uuid.

Stdlib at import; cryptography, castellan and oslo.* are imported inside the functions.
"""

from __future__ import annotations

import base64
import datetime
import io
import os
from collections.abc import Callable
from typing import Any

HASH_METHODS = ("SHA-224", "SHA-256", "SHA-384", "SHA-512")
RSA_PSS = "RSA-PSS"
ECC_CURVES = ("SECP384R1", "SECP521R1")  # the prime curves cursive registers
CHUNK = 1 << 20


def _hash(name: str) -> Any:
    from cryptography.hazmat.primitives import hashes
    table = {"SHA-224": hashes.SHA224, "SHA-256": hashes.SHA256,
             "SHA-384": hashes.SHA384, "SHA-512": hashes.SHA512}
    if name not in table:
        raise ValueError(f"hash method {name!r} not one of {HASH_METHODS}")
    return table[name]()


def make_key(key_type: str = RSA_PSS, key_size: int = 2048) -> Any:
    """A private key for key_type: ``RSA-PSS`` (RSA, key_size bits) or ``ECC_<CURVE>``."""
    if key_type == RSA_PSS:
        from cryptography.hazmat.primitives.asymmetric import rsa
        return rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    if key_type.startswith("ECC_") and key_type[4:] in ECC_CURVES:
        from cryptography.hazmat.primitives.asymmetric import ec
        return ec.generate_private_key(getattr(ec, key_type[4:])())
    raise ValueError(f"key type {key_type!r}: RSA-PSS or ECC_{'/'.join(ECC_CURVES)}")


def key_type_of(key: Any) -> str:
    """The img_signature_key_type for a private (or public) key."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return RSA_PSS
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ECC_" + key.curve.name.upper()
    raise ValueError(f"unsupported key {type(key).__name__}")


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "image_handlers lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> Any:
    from cryptography import x509
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=False, data_encipherment=False,
                         key_agreement=False, key_cert_sign=key_cert_sign,
                         crl_sign=key_cert_sign, encipher_only=False, decipher_only=False)


def _certificate(subject: str, public_key: Any, issuer: Any, issuer_key: Any, *,
                 ca: bool, days: int) -> Any:
    from cryptography import x509
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject))
               .issuer_name(issuer)
               .public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None),
                              critical=True)
               .add_extension(_key_usage(digital_signature=not ca, key_cert_sign=ca),
                              critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                              critical=False))
    return builder.sign(issuer_key, _hash("SHA-256"))


def make_ca(common_name: str = "lab image-signing CA", *, key_type: str = RSA_PSS,
            key_size: int = 2048, days: int = 30) -> tuple[Any, Any]:
    """(certificate, private key) of a self-signed CA: basicConstraints CA=True
    (path length 0), keyUsage keyCertSign + cRLSign."""
    key = make_key(key_type, key_size)
    cert = _certificate(common_name, key.public_key(), _name(common_name), key,
                        ca=True, days=days)
    return cert, key


def make_signing_cert(ca_cert: Any, ca_key: Any, common_name: str = "lab image signer",
                      *, key_type: str = RSA_PSS, key_size: int = 2048,
                      days: int = 30) -> tuple[Any, Any]:
    """(certificate, private key) of a signing certificate issued by the CA:
    basicConstraints CA=False, keyUsage digitalSignature."""
    key = make_key(key_type, key_size)
    cert = _certificate(common_name, key.public_key(), ca_cert.subject, ca_key,
                        ca=False, days=days)
    return cert, key


def sign(data_or_file: Any, key: Any, hash_method: str = "SHA-256",
         key_type: str | None = None, *, certificate_uuid: str) -> dict[str, str]:
    """The four image signature properties for the data, signed with key.

    data_or_file: bytes-like, a path (str / os.PathLike), or a binary file object
    (read in 1 MiB chunks from its current position; the hash is computed as data
    streams, then signed as Prehashed: the same signature as over the whole data).
    key_type: RSA-PSS / ECC_SECP384R1 / ECC_SECP521R1; None = from the key (an explicit
    value must match it).
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

    actual = key_type_of(key)
    if key_type is not None and key_type != actual:
        raise ValueError(f"key type {key_type!r} does not match the key ({actual})")
    algorithm = _hash(hash_method)
    digest = hashes.Hash(algorithm)
    if isinstance(data_or_file, (bytes, bytearray, memoryview)):
        digest.update(bytes(data_or_file))
    elif isinstance(data_or_file, (str, os.PathLike)):
        with open(data_or_file, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
    elif isinstance(data_or_file, io.IOBase) or hasattr(data_or_file, "read"):
        for chunk in iter(lambda: data_or_file.read(CHUNK), b""):
            digest.update(chunk)
    else:
        raise TypeError(f"cannot sign a {type(data_or_file).__name__}")
    prehashed = utils.Prehashed(algorithm)
    if actual == RSA_PSS:  # cursive: MGF1(same hash), salt length PSS.MAX_LENGTH
        signature = key.sign(digest.finalize(), padding.PSS(
            mgf=padding.MGF1(algorithm), salt_length=padding.PSS.MAX_LENGTH), prehashed)
    else:
        signature = key.sign(digest.finalize(), ec.ECDSA(prehashed))
    return {"img_signature": base64.b64encode(signature).decode(),
            "img_signature_hash_method": hash_method,
            "img_signature_key_type": actual,
            "img_signature_certificate_uuid": certificate_uuid}


# -- castellan / Barbican ---------------------------------------------------------------
def castellan_options(keystone: Any) -> dict[str, dict[str, Any]]:
    """castellan's options for the lab cloud, ``{group: {option: value}}`` (the
    ``[key_manager]`` and ``[barbican]`` parts of keystone.nova_conf_keystone_dict)."""
    from .keystone import nova_conf_keystone_dict
    conf = nova_conf_keystone_dict(keystone)
    return {"key_manager": conf["key_manager"], "barbican": conf["barbican"]}


def configure_castellan(conf: Any, keystone: Any) -> Callable[[], None]:
    """Register castellan's options on conf (an oslo.config ConfigOpts, e.g. the global
    ``cfg.CONF`` cursive uses) and override them for the lab cloud; returns a function
    that clears the overrides again."""
    from castellan import options as castellan_opts
    castellan_opts.set_defaults(conf)  # registers [key_manager] and [barbican]
    done = []
    for group, opts in castellan_options(keystone).items():
        for name, value in opts.items():
            conf.set_override(name, value, group=group)
            done.append((name, group))

    def undo() -> None:
        for name, group in done:
            conf.clear_override(name, group=group)
    return undo


def private_conf(keystone: Any) -> Any:
    """A fresh ConfigOpts with castellan configured for the lab (no global state)."""
    from oslo_config import cfg
    conf = cfg.ConfigOpts()
    conf([], project="image_handlers_lab", default_config_files=[],
         default_config_dirs=[])
    configure_castellan(conf, keystone)
    return conf


def request_context(keystone: Any, user: str, project: str) -> Any:
    """oslo.context RequestContext with a fresh token of user in project (and the
    project's id), as Nova passes its request context to castellan/cursive."""
    from oslo_context import context
    return context.RequestContext(auth_token=keystone.token(user, project),
                                  project_id=keystone.project_id(project),
                                  project_name=project)


def store_certificate(cert: Any, context: Any, conf: Any = None, *,
                      name: str | None = 'image signing certificate') -> str:
    """Store an X.509 certificate (cryptography object, or DER bytes) in Barbican as the
    context's user, through castellan (``X509`` objects are stored as PEM); returns the
    secret's uuid, the value of img_signature_certificate_uuid. Named, as Glance's
    signing guide stores it: barbicanclient fetches an unnamed secret's metadata
    again for every property castellan reads (14 requests per read, measured)."""
    from castellan import key_manager
    from castellan.common.objects import x_509
    from cryptography.hazmat.primitives import serialization
    der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
    return key_manager.API(conf).store(context, x_509.X509(der, name=name))
