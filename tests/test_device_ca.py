"""The optional device CA: certificates that phones accept, renewed when needed, and unable to vouch
for anything outside the LAN; the daemon serving over HTTPS with it."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from petcamd.protocol.pairing_url import decode_pairing_url
from petcamd.secure.device_ca import CA_DOWNLOAD_PATH, ensure_device_tls
from tests.test_lan_signaling import lan_port, parse_csp, running_daemon

HOSTS = ["127.0.0.1", "192.168.1.20", "fd00::20", "petcam-ab12.local"]


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_and_server_certificate_are_made_once_and_kept(tmp_path: Path) -> None:
    tls = ensure_device_tls(tmp_path / "tls", device_id="a" * 16, device_name="Kitchen", hosts=HOSTS)
    ca = load(tmp_path / "tls" / "ca.crt")
    server = load(tls.certificate)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert x509.DNSName("local") in (constraints.value.permitted_subtrees or [])
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(h) for h in ("127.0.0.1", "192.168.1.20", "fd00::20")
    }
    assert san.get_values_for_type(x509.DNSName) == ["petcam-ab12.local"]
    for key in ("ca.key", "server.key"):
        assert (tmp_path / "tls" / key).stat().st_mode & 0o777 == 0o600
    assert tls.ca_der == ca.public_bytes(serialization.Encoding.DER)
    assert len(tls.ca_fingerprint.split(":")) == 32

    before = {p.name: p.read_bytes() for p in (tmp_path / "tls").iterdir()}
    again = ensure_device_tls(tmp_path / "tls", device_id="a" * 16, device_name="Kitchen", hosts=HOSTS[:2])
    assert {p.name: p.read_bytes() for p in (tmp_path / "tls").iterdir()} == before  # covered: kept
    assert again.ca_fingerprint == tls.ca_fingerprint


def test_server_certificate_is_reissued_for_new_addresses_and_before_expiry(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    ensure_device_tls(directory, device_id="a" * 16, device_name="Kitchen", hosts=HOSTS)
    ca_before, server_before = (directory / "ca.crt").read_bytes(), (directory / "server.crt").read_bytes()

    ensure_device_tls(directory, device_id="a" * 16, device_name="Kitchen", hosts=[*HOSTS, "10.0.0.7"])
    assert (directory / "ca.crt").read_bytes() == ca_before  # the installed CA stays valid
    renewed = (directory / "server.crt").read_bytes()
    assert renewed != server_before
    assert ipaddress.ip_address("10.0.0.7") in load(
        directory / "server.crt"
    ).extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.IPAddress
    )

    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=380)  # within 30 days of expiry
    ensure_device_tls(directory, device_id="a" * 16, device_name="Kitchen", hosts=HOSTS, now=later)
    assert (directory / "server.crt").read_bytes() != renewed
    assert (directory / "ca.crt").read_bytes() == ca_before


def test_a_corrupt_server_key_is_replaced_but_a_corrupt_ca_is_an_error(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    ensure_device_tls(directory, device_id="a" * 16, device_name="Kitchen", hosts=HOSTS)
    (directory / "server.key").write_bytes(b"garbage")
    ensure_device_tls(directory, device_id="a" * 16, device_name="Kitchen", hosts=HOSTS)
    assert (directory / "server.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    (directory / "ca.key").write_bytes(b"garbage")
    from petcamd.secure.device_ca import DeviceTlsError

    with pytest.raises(DeviceTlsError, match="device CA"):  # never silently replaced: phones trust it
        ensure_device_tls(directory, device_id="a" * 16, device_name="Kitchen", hosts=HOSTS)


def test_the_ca_cannot_vouch_for_an_internet_name(tmp_path: Path) -> None:
    """Even with the CA's private key, a certificate for a public name fails verification."""
    directory = tmp_path / "tls"
    tls = ensure_device_tls(directory, device_id="a" * 16, device_name="Kitchen", hosts=HOSTS)
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = load(directory / "ca.crt")
    now = datetime.datetime.now(datetime.UTC)

    def leaf(name: x509.GeneralName) -> Path:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([name]), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        path = tmp_path / f"leaf-{len(list(tmp_path.iterdir()))}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def verify(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "verify", "-CAfile", str(directory / "ca.crt"), str(path)],
            capture_output=True,
            text=True,
            check=False,
        )

    assert verify(tls.certificate).returncode == 0  # the control: the real server certificate passes
    assert verify(leaf(x509.DNSName("kitchen.local"))).returncode == 0
    for name in (x509.DNSName("bank.example"), x509.IPAddress(ipaddress.ip_address("203.0.113.5"))):
        result = verify(leaf(name))
        assert result.returncode != 0
        assert "subtree" in (result.stdout + result.stderr).lower()


@pytest.mark.usefixtures("loopback_ice")
@pytest.mark.timeout(60)
async def test_daemon_serves_https_with_the_device_ca_and_offers_the_ca(
    tmp_path: Path, bus_address: str
) -> None:
    async with running_daemon(tmp_path, bus_address, network={"https": True, "https_port": 0}) as daemon:
        assert daemon.lan is not None
        https_port = daemon.lan.https_port
        assert https_port is not None
        assert daemon.controller is not None
        status = daemon.controller.status()
        assert status.https_port == https_port
        url = daemon.controller.start_pairing().url
        assert url.startswith(f"https://127.0.0.1:{https_port}/#")
        assert decode_pairing_url(url).port == lan_port(daemon)  # signaling stays on the LAN port

        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{lan_port(daemon)}{CA_DOWNLOAD_PATH}") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "application/x-x509-ca-cert"
                ca_der = await response.read()
            trusting = ssl.create_default_context(
                cadata=x509.load_der_x509_certificate(ca_der)
                .public_bytes(serialization.Encoding.PEM)
                .decode()
            )
            async with http.get(f"https://127.0.0.1:{https_port}/js/noise.js", ssl=trusting) as response:
                assert response.status == 200
                csp = parse_csp(response.headers["Content-Security-Policy"])
                assert csp["connect-src"][:2] == ["'self'", f"wss://127.0.0.1:{https_port}"]
                assert "Strict-Transport-Security" not in response.headers  # would break the http origin
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # untrusted without the CA
                async with http.get(f"https://127.0.0.1:{https_port}/", ssl=ssl.create_default_context()):
                    pass
