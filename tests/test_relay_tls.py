"""Built-in TLS with a certificate made in the test, on 127.0.0.1; renewal without a restart."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from petcamd.protocol.relay import Connect, Data, Open
from petcamd.relay.tls import TlsError, server_ssl_context
from tests.test_relay_harness import relay_config, running_relay


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cryptography 38 API: no *_utc helpers)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_relay_over_builtin_tls(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "relay")
    config = relay_config(tls={"certificate": str(cert), "private_key": str(key)})
    trusting = ssl.create_default_context(cafile=str(cert))
    async with running_relay(config, client_ssl=trusting) as relay:
        assert relay.base_url.startswith("https://127.0.0.1:")
        async with relay.session.get(relay.url("/healthz")) as response:
            assert response.status == 200
            assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
        device = await relay.device()
        viewer = await relay.viewer()
        await viewer.send(Connect(1, device.device_id))
        opened = await device.recv()
        assert isinstance(opened, Open)
        await viewer.send(Data(1, b"over TLS"))
        assert await device.recv() == Data(opened.conn_id, b"over TLS")

        # A client that does not trust the certificate gets nowhere.
        async with aiohttp.ClientSession() as untrusting:
            with pytest.raises(aiohttp.ClientConnectorError):
                await untrusting.get(relay.url("/healthz"))

        # Renewal: new files in place, reload, new connections see the new certificate while
        # the open ones carry on.
        new_cert, new_key = make_certificate(tmp_path, "renewed")
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        relay.server.reload_tls()
        renewed_ssl = ssl.create_default_context(cafile=str(new_cert))
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=renewed_ssl)) as renewed,
            renewed.get(relay.url("/healthz")) as response,
        ):
            assert response.status == 200
        await viewer.send(Data(1, b"still here"))
        assert await device.recv() == Data(opened.conn_id, b"still here")

        # A broken renewal is refused and the current certificate stays in service.
        unrelated_cert, _ = make_certificate(tmp_path, "unrelated")
        cert.write_bytes(unrelated_cert.read_bytes())  # a certificate that does not match the key
        with pytest.raises(TlsError):
            relay.server.reload_tls()
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=renewed_ssl)) as again,
            again.get(relay.url("/healthz")) as response,
        ):
            assert response.status == 200


def test_unusable_certificate_is_reported(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "a")
    _, other_key = make_certificate(tmp_path, "b")
    with pytest.raises(TlsError, match="cannot use certificate"):
        server_ssl_context(cert, other_key)
    with pytest.raises(TlsError, match="no such file"):
        server_ssl_context(tmp_path / "missing.crt", key)
