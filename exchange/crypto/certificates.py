"""A development certificate authority and the identities carried by TLS certificates.

Production plugs in the government PKI (keys/README.md): the hub only needs a CA bundle, its own
server certificate, and client certificates whose subject common name is the department id.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEPARTMENT_URI_PREFIX = "urn:exchange:department:"


class CertificateError(Exception):
    """A certificate cannot be parsed or names no department."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate and its private key, both PEM."""

    certificate_pem: bytes
    private_key_pem: bytes


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(name: str, *, days: int = 3650) -> IssuedCertificate:
    """Create a self-signed development CA (ECDSA P-256) named ``name``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return IssuedCertificate(
        certificate.public_bytes(serialization.Encoding.PEM), _private_pem(key)
    )


def issue(
    ca: IssuedCertificate,
    common_name: str,
    *,
    server_names: tuple[str, ...] = (),
    client: bool = True,
    days: int = 825,
) -> IssuedCertificate:
    """Issue a certificate signed by ``ca``.

    A client certificate (``client=True``) carries ``common_name`` (the department id) as its
    subject CN and as a ``urn:exchange:department:`` SAN URI. ``server_names`` (DNS names or IP
    addresses) make it usable as a server certificate as well.
    """
    ca_cert = x509.load_pem_x509_certificate(ca.certificate_pem)
    ca_key = serialization.load_pem_private_key(ca.private_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    alt_names: list[x509.GeneralName] = []
    for name in server_names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    if client:
        alt_names.append(x509.UniformResourceIdentifier(DEPARTMENT_URI_PREFIX + common_name))
    usages = []
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if server_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())
    return IssuedCertificate(
        certificate.public_bytes(serialization.Encoding.PEM), _private_pem(key)
    )


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who a client certificate says the caller is."""

    department_id: str
    certificate_sha256: str


@functools.lru_cache(maxsize=4096)
def peer_identity(certificate_pem: bytes) -> PeerIdentity:
    """Return the department named by a client certificate and the certificate's fingerprint.

    The department id is the ``urn:exchange:department:`` SAN URI if present, else the subject
    CN. Raises CertificateError if the certificate cannot be parsed or names nobody. Results are
    cached by certificate bytes: every call of a connection presents the same certificate, and
    parsing it costs more than the rest of authentication but the signature check.
    """
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError as exc:
        raise CertificateError("the client certificate cannot be parsed") from exc
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(DEPARTMENT_URI_PREFIX):
                return PeerIdentity(uri[len(DEPARTMENT_URI_PREFIX) :], fingerprint)
    except x509.ExtensionNotFound:
        pass
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise CertificateError("the client certificate names no department")
    value = names[0].value
    return PeerIdentity(value if isinstance(value, str) else value.decode(), fingerprint)


def certificate_sha256(certificate_pem: bytes) -> str:
    """Lowercase hex SHA-256 of the DER encoding of a PEM certificate."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
