"""The optional device CA: HTTPS on the LAN for owners who want a secure context with no internet.

Off by default (docs/web-viewer.md explains why plain HTTP is the default). When enabled, the
device makes its own certificate authority once and a server certificate for its current LAN
addresses; the owner installs the CA on a phone (downloaded from ``/petcamd-ca.crt``) and then
gets https with no warning. The CA is name-constrained to LAN names and private addresses, so
even a stolen CA key cannot vouch for any site on the internet.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from petcamd.atomic_file import write_atomic

log = logging.getLogger(__name__)

__all__ = ["CA_DOWNLOAD_PATH", "DeviceTls", "DeviceTlsError", "ensure_device_tls"]

CA_DOWNLOAD_PATH = "/petcamd-ca.crt"
CA_DAYS = 3650
SERVER_DAYS = 397
"""Phones refuse longer-lived server certificates."""
RENEW_BEFORE_DAYS = 30

# Names a LAN device can have; nothing on the public internet.
_PERMITTED: list[x509.GeneralName] = [
    x509.DNSName("local"),
    x509.DNSName("localhost"),
    *(
        x509.IPAddress(ipaddress.ip_network(net))
        for net in (
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "169.254.0.0/16",
            "127.0.0.0/8",
            "100.64.0.0/10",
            "fc00::/7",
            "fe80::/10",
            "::1/128",
        )
    ),
]


class DeviceTlsError(Exception):
    """The CA or server certificate cannot be made or loaded; the message says which file."""


@dataclass(frozen=True, slots=True)
class DeviceTls:
    ca_der: bytes
    """What the owner downloads and installs."""
    ca_fingerprint: str
    """SHA-256 of the CA certificate, hex with colons, to compare on the phone before trusting it."""
    certificate: Path
    private_key: Path
    hosts: tuple[str, ...]

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.certificate, self.private_key)
        return context


def ensure_device_tls(
    directory: Path,
    *,
    device_id: str,
    device_name: str,
    hosts: Sequence[str],
    now: datetime.datetime | None = None,
) -> DeviceTls:
    """Load or make the CA, and (re)issue the server certificate when it is missing, expiring, does
    not cover ``hosts`` (addresses and names), or was not issued by this CA."""
    now = now or datetime.datetime.now(datetime.UTC)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key_path, ca_path = directory / "ca.key", directory / "ca.crt"
    key_path, cert_path = directory / "server.key", directory / "server.crt"
    try:
        if ca_path.exists() and ca_key_path.exists():
            ca_key = _load_key(ca_key_path)
            ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        else:
            ca_key, ca = _make_ca(device_id, now)
            write_atomic(ca_key_path, _key_pem(ca_key), mode=0o600)
            write_atomic(ca_path, ca.public_bytes(serialization.Encoding.PEM), mode=0o644)
            log.info("made the device CA for HTTPS on the LAN")
        wanted = tuple(dict.fromkeys(hosts))
        if not _server_ok(cert_path, key_path, ca, wanted, now):
            key = ec.generate_private_key(ec.SECP256R1())
            certificate = _make_server(key, ca_key, ca, device_name, wanted, now)
            write_atomic(key_path, _key_pem(key), mode=0o600)
            write_atomic(cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
            log.info("issued the LAN server certificate for %s", ", ".join(wanted))
    except (OSError, ValueError, TypeError) as exc:
        raise DeviceTlsError(f"device CA in {directory}: {exc}") from exc
    ca_der = ca.public_bytes(serialization.Encoding.DER)
    fingerprint = ":".join(f"{b:02X}" for b in hashlib.sha256(ca_der).digest())
    return DeviceTls(ca_der, fingerprint, cert_path, key_path, wanted)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{path.name} is not an EC key")
    return key


def _make_ca(device_id: str, now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "petcamd"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"petcamd device {device_id} local CA"),
        ]
    )
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(
            x509.NameConstraints(permitted_subtrees=_PERMITTED, excluded_subtrees=None), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _san(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.split("%", 1)[0])))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _make_server(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    device_name: str,
    hosts: Sequence[str],
    now: datetime.datetime,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (device_name or "petcamd")[:64])])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _not_after(certificate: x509.Certificate) -> datetime.datetime:
    value: datetime.datetime | None = getattr(certificate, "not_valid_after_utc", None)  # cryptography >= 42
    if value is None:
        value = certificate.not_valid_after.replace(tzinfo=datetime.UTC)
    return value


def _spki(key: object) -> bytes:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return b""
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _server_ok(
    cert_path: Path, key_path: Path, ca: x509.Certificate, hosts: Sequence[str], now: datetime.datetime
) -> bool:
    if not cert_path.exists() or not key_path.exists():
        return False
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = _load_key(key_path)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    if certificate.issuer != ca.subject or _spki(key) != _spki(certificate.public_key()):
        return False
    if _not_after(certificate) - now < datetime.timedelta(days=RENEW_BEFORE_DAYS):
        return False
    issuer_key, algorithm = ca.public_key(), certificate.signature_hash_algorithm
    if not isinstance(issuer_key, ec.EllipticCurvePublicKey) or algorithm is None:
        return False
    try:
        issuer_key.verify(certificate.signature, certificate.tbs_certificate_bytes, ec.ECDSA(algorithm))
    except InvalidSignature:
        return False
    return set(_san(hosts)) <= set(san)
