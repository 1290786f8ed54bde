"""The connection test (petcamctl nettest) against a real relay and real coturn servers on loopback.

The STUN/TURN codec is checked against the RFC 5769 test vectors; the NAT classifier and the
verdict are pure functions, tested case by case. A real NAT is issue #12's network-namespace work:
on loopback every server sees the probe's own address, which is what "no NAT" means.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from petcamd.config import NetworkConfig
from petcamd.control import stun
from petcamd.control.netprobe import (
    Observation,
    RelayResult,
    StunResult,
    TurnResult,
    device_url,
    parse_ice_url,
)
from petcamd.control.nettest import (
    Finding,
    NatMapping,
    NatResult,
    NettestReport,
    NettestSettings,
    assess,
    classify_mapping,
    run_nettest,
)
from tests.coturn import Coturn, free_port_block, rest_credentials, running_coturn
from tests.test_relay_harness import relay_config, running_relay
from tests.test_relay_tls import make_certificate

USER, PASSWORD = "petcam", "litter-box"
WRONG = "not the password"

# --- the codec: RFC 5769 test vectors --------------------------------------------------------

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220"
    "002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96"
)
RFC5769_IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)
RFC5769_LONG_TERM_REQUEST = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe382b90000"
    "0015001c662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b6578616d706c652e6f726700"
    "00080014f67024656dd64a3e02b8e0712e85c9a28ca89666"
)
SHORT_TERM_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"


def test_rfc5769_responses_decode_and_verify() -> None:
    v4 = stun.decode(RFC5769_IPV4_RESPONSE)
    assert (v4.method, v4.kind, v4.transaction_id) == (stun.Method.BINDING, stun.Kind.SUCCESS, TID)
    assert v4.mapped() == ("192.0.2.1", 32853)
    assert v4.text(stun.Attr.SOFTWARE) == "test vector"
    assert v4.integrity_ok(SHORT_TERM_PASSWORD)
    assert not v4.integrity_ok(b"another password")

    v6 = stun.decode(RFC5769_IPV6_RESPONSE)
    assert v6.mapped() == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert v6.integrity_ok(SHORT_TERM_PASSWORD)


def test_rfc5769_long_term_credentials() -> None:
    request = stun.decode(RFC5769_LONG_TERM_REQUEST)
    assert request.text(stun.Attr.USERNAME) == "マトリックス"
    assert request.text(stun.Attr.REALM) == "example.org"
    # "The\u00adM\u00aatr\u2168" after SASLprep; the probe leaves SASLprep out (ASCII passes unchanged).
    assert request.integrity_ok(stun.long_term_key("マトリックス", "example.org", "TheMatrIX"))
    assert not request.integrity_ok(stun.long_term_key("マトリックス", "example.org", "TheMatrix"))


def test_encoded_messages_decode_to_what_was_encoded() -> None:
    key = stun.long_term_key(USER, "petcam.test", PASSWORD)
    attributes = [
        (stun.Attr.XOR_RELAYED_ADDRESS, stun.pack_address(("203.0.113.9", 50000), TID)),
        (stun.Attr.ERROR_CODE, bytes((0, 0, 4, 38)) + b"Stale Nonce"),
        (stun.Attr.NONCE, b"abc"),  # padded to four bytes on the wire
    ]
    data = stun.encode(
        stun.Method.ALLOCATE, stun.Kind.ERROR, attributes, transaction_id=TID, integrity_key=key
    )
    assert data[:2] == b"\x01\x13"  # Allocate error response (RFC 5766 section 13)
    message = stun.decode(data)
    assert (message.method, message.kind) == (stun.Method.ALLOCATE, stun.Kind.ERROR)
    assert message.address(stun.Attr.XOR_RELAYED_ADDRESS) == ("203.0.113.9", 50000)
    assert message.error() == (438, "Stale Nonce")
    assert message.attributes[stun.Attr.NONCE] == b"abc"
    assert message.integrity_ok(key)
    assert stun.encode(stun.Method.REFRESH, stun.Kind.REQUEST, transaction_id=TID)[:2] == b"\x00\x04"

    with pytest.raises(stun.StunError, match="FINGERPRINT"):
        stun.decode(data[:-1] + bytes((data[-1] ^ 1,)))
    with pytest.raises(stun.StunError):
        stun.decode(data[:-4])
    with pytest.raises(stun.StunError):
        stun.decode(b"\x17\x03\x03" + bytes(30))  # a TLS record, not STUN


# --- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("stun:stun.test", ("stun", "stun.test", 3478, "udp")),
        ("stun:192.0.2.7:19302", ("stun", "192.0.2.7", 19302, "udp")),
        ("turn:turn.test", ("turn", "turn.test", 3478, "udp")),
        ("turn:turn.test:3478?transport=tcp", ("turn", "turn.test", 3478, "tcp")),
        ("turn:turn.test:3478?transport=udp", ("turn", "turn.test", 3478, "udp")),
        ("turns:turn.test:443", ("turns", "turn.test", 443, "tls")),
        ("turns:turn.test?transport=tcp", ("turns", "turn.test", 5349, "tls")),
        ("TURN:[2001:db8::1]:3479", ("turn", "2001:db8::1", 3479, "udp")),
    ],
)
def test_ice_urls(url: str, expected: tuple[str, str, int, str]) -> None:
    parsed = parse_ice_url(url)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.transport) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://turn.test",
        "turn:",
        "turn:turn.test:99999",
        "turns:turn.test?transport=udp",
        "stun:h:abc",
        "x",
    ],
)
def test_unusable_ice_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_ice_url(url)


@pytest.mark.parametrize(
    ("relay_url", "expected"),
    [
        ("wss://relay.test/", "wss://relay.test/device"),
        ("https://relay.test", "wss://relay.test/device"),
        ("ws://127.0.0.1:8443", "ws://127.0.0.1:8443/device"),
        ("wss://relay.test/petcam/", "wss://relay.test/petcam/device"),
    ],
)
def test_device_url(relay_url: str, expected: str) -> None:
    assert device_url(relay_url) == expected


# --- the NAT classifier ------------------------------------------------------------------------

LOCAL = ("192.168.1.20", 40000)
A, A_ALT_PORT, B = ("198.51.100.1", 3478), ("198.51.100.1", 3479), ("198.51.100.2", 3478)
ALT, ALT_ALT_PORT = ("203.0.113.1", 3478), ("203.0.113.1", 3479)
P1, P2, P3 = ("192.0.2.50", 40000), ("192.0.2.50", 61000), ("192.0.2.50", 61001)


def _obs(
    *pairs: tuple[tuple[str, int], tuple[str, int]], local: tuple[str, int] = LOCAL
) -> list[Observation]:
    return [Observation(destination, mapped, local) for destination, mapped in pairs]


@pytest.mark.parametrize(
    ("observations", "expected"),
    [
        ([], NatMapping.UNKNOWN),
        (_obs((A, LOCAL)), NatMapping.NO_NAT),
        (_obs((A, LOCAL), (B, LOCAL)), NatMapping.NO_NAT),
        (_obs((A, P1)), NatMapping.UNDETERMINED),
        (_obs((A, P1), (A, P1)), NatMapping.UNDETERMINED),  # one destination asked twice
        (_obs((A, P1), (A_ALT_PORT, P1)), NatMapping.UNDETERMINED),  # only the port varied
        (_obs((A, P1), (B, P1)), NatMapping.ENDPOINT_INDEPENDENT),
        (_obs((A, P1), (B, P2)), NatMapping.DESTINATION_DEPENDENT),
        # RFC 5780 tests I, II (alternate address) and III (alternate address and port):
        (_obs((A, P1), (ALT, P1), (ALT_ALT_PORT, P1)), NatMapping.ENDPOINT_INDEPENDENT),
        (_obs((A, P1), (ALT, P2), (ALT_ALT_PORT, P2)), NatMapping.ADDRESS_DEPENDENT),
        (_obs((A, P1), (ALT, P2), (ALT_ALT_PORT, P3)), NatMapping.ADDRESS_AND_PORT_DEPENDENT),
        (_obs((A, P1), (A_ALT_PORT, P2)), NatMapping.ADDRESS_AND_PORT_DEPENDENT),
        # The router kept the port but a second server saw another public address (a NAT pool):
        (_obs((A, P1), (B, ("192.0.2.51", 40000))), NatMapping.DESTINATION_DEPENDENT),
    ],
)
def test_classify_mapping(observations: list[Observation], expected: NatMapping) -> None:
    assert classify_mapping(observations) is expected


# --- the verdict -------------------------------------------------------------------------------

RELAY_OK = RelayResult(
    "wss://relay.test/device",
    reachable=True,
    expected_origin="https://relay.test",
    origin="https://relay.test",
    connect_ms=80.0,
    rtt_ms=21.0,
    tls=True,
)
RELAY_DOWN = RelayResult(
    "wss://relay.test/device",
    expected_origin="https://relay.test",
    error="connection refused by relay.test (nothing listens there)",
)
RELAY_WRONG_ORIGIN = RelayResult(
    "wss://relay.test/device",
    reachable=True,
    expected_origin="https://relay.test",
    origin="https://localhost:8443",
    connect_ms=80.0,
    rtt_ms=21.0,
    tls=True,
)
STUN_OK = (
    StunResult("stun:a.test", A, P1, rtt_ms=10.0),
    StunResult("stun:b.test", B, P1, rtt_ms=12.0),
)
STUN_SILENT = (StunResult("stun:a.test", error="no answer within 3 s"),)
EIM = NatResult(NatMapping.ENDPOINT_INDEPENDENT, tuple(_obs((A, P1), (B, P1))))
SYMMETRIC = NatResult(NatMapping.DESTINATION_DEPENDENT, tuple(_obs((A, P1), (B, P2))))
NO_NAT = NatResult(NatMapping.NO_NAT, tuple(_obs((A, LOCAL))))
ONE_SERVER = NatResult(NatMapping.UNDETERMINED, tuple(_obs((A, P1))))
TURN_OK = TurnResult("turn:t.test", "udp", server=A, allocated=True, relayed=B, released=True)
TURN_UNTESTED = TurnResult("turn:t.test", "udp", tested=False, error="no TURN credentials were given")
TURN_AUTH = TurnResult(
    "turn:t.test",
    "udp",
    auth_failed=True,
    error="the server refused the username or password (401 Unauthorized)",
)

LAN = Finding("ok", "Viewers on your Wi-Fi can connect directly.")
RELAY_FINDING = Finding("ok", "The relay at wss://relay.test/device is reachable (21 ms round trip).")
NEEDS_TURN = (
    "Your router changes ports per destination (symmetric NAT): outside viewers will need the TURN relay"
)


@pytest.mark.parametrize(
    ("relay", "stun_results", "nat", "turn", "expected"),
    [
        pytest.param(
            RELAY_OK,
            STUN_OK,
            EIM,
            (),
            [
                LAN,
                RELAY_FINDING,
                Finding(
                    "ok",
                    "From outside, direct connections should work (your router keeps the same public port).",
                ),
            ],
            id="all-well",
        ),
        pytest.param(
            RELAY_OK,
            STUN_OK,
            SYMMETRIC,
            (),
            [LAN, RELAY_FINDING, Finding("error", f"{NEEDS_TURN}, and none is configured.")],
            id="symmetric-without-turn",
        ),
        pytest.param(
            RELAY_OK,
            STUN_OK,
            SYMMETRIC,
            (TURN_OK,),
            [LAN, RELAY_FINDING, Finding("warning", f"{NEEDS_TURN}, and it works (udp).")],
            id="symmetric-with-turn",
        ),
        pytest.param(
            RELAY_OK,
            STUN_OK,
            SYMMETRIC,
            (TURN_UNTESTED,),
            [
                LAN,
                RELAY_FINDING,
                Finding("error", f"{NEEDS_TURN}, but it could not be tested without TURN credentials."),
                Finding("warning", "TURN server turn:t.test was not tested: no TURN credentials were given"),
            ],
            id="symmetric-turn-untested",
        ),
        pytest.param(
            RELAY_OK,
            STUN_OK,
            SYMMETRIC,
            (TURN_AUTH,),
            [
                LAN,
                RELAY_FINDING,
                Finding("error", f"{NEEDS_TURN}, but the TURN relay failed (see below)."),
                Finding(
                    "error",
                    "The TURN server turn:t.test failed: "
                    "the server refused the username or password (401 Unauthorized).",
                ),
            ],
            id="symmetric-turn-refuses-credentials",
        ),
        pytest.param(
            RELAY_DOWN,
            STUN_OK,
            NO_NAT,
            (),
            [
                LAN,
                Finding(
                    "error",
                    "The relay at wss://relay.test/device is unreachable: connection refused by relay.test "
                    "(nothing listens there). Viewers outside your network cannot reach the camera.",
                ),
                Finding(
                    "ok", "The camera has a public address (no NAT): outside viewers can connect directly."
                ),
            ],
            id="relay-down",
        ),
        pytest.param(
            RELAY_WRONG_ORIGIN,
            STUN_OK,
            EIM,
            (),
            [
                LAN,
                Finding(
                    "error",
                    "The relay at wss://relay.test/device says it is https://localhost:8443, but the camera "
                    "connects to it as https://relay.test: the relay's public_origin is misconfigured (or "
                    "relay_url is wrong), and the camera cannot register there.",
                ),
                Finding(
                    "ok",
                    "From outside, direct connections should work (your router keeps the same public port).",
                ),
            ],
            id="relay-wrong-origin",
        ),
        pytest.param(
            None,
            (),
            NatResult(),
            (),
            [
                LAN,
                Finding(
                    "warning",
                    "No relay is configured: only viewers on your own network can reach the camera.",
                ),
                Finding(
                    "warning",
                    "No STUN server is configured: the camera cannot learn its public address, so viewers "
                    "outside your network may not get a direct connection.",
                ),
            ],
            id="nothing-configured",
        ),
        pytest.param(
            RELAY_OK,
            STUN_SILENT,
            NatResult(),
            (TURN_OK,),
            [
                LAN,
                RELAY_FINDING,
                Finding(
                    "warning",
                    "No STUN server answered (no answer within 3 s): outgoing UDP may be blocked, so "
                    "outside viewers will need the TURN relay, and it works (udp).",
                ),
            ],
            id="udp-blocked-turn-works",
        ),
        pytest.param(
            RELAY_OK,
            STUN_OK[:1],
            ONE_SERVER,
            (),
            [
                LAN,
                RELAY_FINDING,
                Finding(
                    "warning",
                    "The camera is behind NAT (public address 192.0.2.50:40000). One STUN server "
                    "cannot tell whether your router keeps the same public port; configure a second one "
                    "to find out.",
                ),
            ],
            id="one-stun-server",
        ),
    ],
)
def test_verdict(
    relay: RelayResult | None,
    stun_results: tuple[StunResult, ...],
    nat: NatResult,
    turn: tuple[TurnResult, ...],
    expected: list[Finding],
) -> None:
    assert list(assess(relay, stun_results, nat, turn)) == expected


DOCS = Path(__file__).resolve().parent.parent / "docs" / "control.md"


def documented_keys() -> list[list[str]]:
    """The first column of each table in docs/control.md's "petcamctl nettest" section, in order."""
    section = DOCS.read_text().split("\n## petcamctl nettest\n", 1)[1].split("\n## ", 1)[0]
    tables: list[list[str]] = []
    for line in section.splitlines():
        if line.startswith("| ---"):
            tables.append([])
        elif line.startswith("| `"):
            tables[-1].append(line.split("`")[1])
    return tables


def test_report_json_keys_and_text() -> None:
    findings = assess(RELAY_OK, STUN_OK, SYMMETRIC, (TURN_AUTH,))
    report = NettestReport(RELAY_OK, STUN_OK, SYMMETRIC, (TURN_AUTH,), 812.34, findings)
    doc = json.loads(json.dumps(report.to_dict()))
    top, relay, stun_keys, nat, turn = documented_keys()
    assert list(doc) == top
    assert list(doc["relay"]) == relay
    assert all(list(s) == stun_keys for s in doc["stun"])
    assert list(doc["nat"]) == nat
    assert all(list(t) == turn for t in doc["turn"])
    assert doc["status"] == "error"
    assert doc["duration_ms"] == 812.3
    assert doc["nat"] == {
        "mapping": "destination_dependent",
        "local": "192.168.1.20:40000",
        "public": ["192.0.2.50:40000", "192.0.2.50:61000"],
        "observations": [
            {"destination": "198.51.100.1:3478", "mapped": "192.0.2.50:40000"},
            {"destination": "198.51.100.2:3478", "mapped": "192.0.2.50:61000"},
        ],
    }
    assert doc["verdict"][2] == {
        "level": "error",
        "text": f"{NEEDS_TURN}, but the TURN relay failed (see below).",
    }

    text = report.human()
    assert "Relay  wss://relay.test/device" in text
    assert "reachable, CHALLENGE after 80 ms, round trip 21 ms, TLS ok, origin https://relay.test ok" in text
    assert "stun:b.test: mapped 192.0.2.50:40000 in 12 ms" in text
    assert "NAT    the public port changes per destination (symmetric NAT)" in text
    assert "TURN   turn:t.test: failed (udp): the server refused the username or password" in text
    assert text.endswith(f"  XX  {findings[-1].text}")

    empty = NettestReport(None, (), NatResult(), (), 1.0, assess(None, (), NatResult(), ()))
    assert empty.status == "warning"
    assert empty.to_dict()["relay"] is None
    assert "Relay  not configured" in empty.human()


def test_settings_from_config() -> None:
    network = NetworkConfig(relay_url="wss://relay.test/", ice_servers=("stun:stun.test",))
    settings = NettestSettings.from_config(network, turn_username=USER, turn_password=PASSWORD)
    assert (settings.relay_url, settings.ice_servers) == ("wss://relay.test/", ("stun:stun.test",))
    assert PASSWORD not in repr(settings)


# --- the relay probe, against a real petcam-relay -----------------------------------------------


@pytest.mark.timeout(30)
async def test_relay_reachable_over_ws() -> None:
    port = free_port_block(1, ["127.0.0.1"])
    config = relay_config(server={"port": port, "public_origin": f"http://127.0.0.1:{port}"})
    async with running_relay(config):
        report = await run_nettest(NettestSettings(relay_url=f"ws://127.0.0.1:{port}"))
    relay = report.relay
    assert relay is not None
    assert relay.url == f"ws://127.0.0.1:{port}/device"
    assert relay.reachable, relay
    assert relay.origin_ok
    assert relay.error is None
    assert relay.tls is None
    assert (relay.connect_ms or 0) > 0
    assert (relay.rtt_ms or 0) > 0
    assert f"The relay at ws://127.0.0.1:{port}/device is reachable (" in report.findings[1].text
    assert report.findings[1].level == "ok"


@pytest.mark.timeout(30)
async def test_relay_over_tls(tmp_path: Path) -> None:
    port = free_port_block(1, ["127.0.0.1"])
    cert, key = make_certificate(tmp_path, "relay")
    config = relay_config(
        server={"port": port, "public_origin": f"https://127.0.0.1:{port}"},
        tls={"certificate": str(cert), "private_key": str(key)},
    )
    trusting = ssl.create_default_context(cafile=str(cert))
    async with running_relay(config, client_ssl=trusting):
        trusted = await run_nettest(
            NettestSettings(relay_url=f"wss://127.0.0.1:{port}", ssl_context=trusting)
        )
        untrusted = await run_nettest(NettestSettings(relay_url=f"https://127.0.0.1:{port}/"))
    assert trusted.relay is not None
    assert untrusted.relay is not None
    assert trusted.relay.reachable
    assert trusted.relay.origin_ok
    assert trusted.relay.tls is True
    assert (trusted.relay.rtt_ms or 0) > 0

    assert not untrusted.relay.reachable
    assert untrusted.relay.tls is False
    assert (untrusted.relay.tls_error or "").startswith("certificate verify failed: self")  # self(-)signed
    assert untrusted.relay.error == f"TLS failed: {untrusted.relay.tls_error}"
    assert untrusted.findings[1].level == "error"


@pytest.mark.timeout(30)
async def test_relay_with_a_wrong_public_origin() -> None:
    async with running_relay() as relay:  # public_origin https://relay.test, reached as 127.0.0.1
        report = await run_nettest(NettestSettings(relay_url=relay.base_url.replace("http", "ws", 1)))
    result = report.relay
    assert result is not None
    assert result.reachable
    assert not result.origin_ok
    assert result.origin == "https://relay.test"
    assert result.expected_origin == relay.base_url
    assert report.status == "error"
    assert "public_origin is misconfigured" in report.findings[1].text
    assert "ORIGIN MISMATCH: relay says https://relay.test" in report.human()


@pytest.mark.timeout(30)
async def test_relay_answering_http_404() -> None:
    async with running_relay() as relay:
        report = await run_nettest(NettestSettings(relay_url=f"{relay.base_url}/not-here/"))
    assert report.relay is not None
    assert report.relay.http_status == 404
    assert not report.relay.reachable
    assert "HTTP 404" in (report.relay.error or "")


async def test_an_unusable_relay_url_is_reported_not_raised() -> None:
    report = await run_nettest(NettestSettings(relay_url="ftp://relay.test", ice_servers=("stun:",)))
    assert report.relay is not None
    assert report.relay.error == "relay_url is not usable: the scheme must be https, wss, http or ws"
    assert report.stun[0].error == "not a STUN or TURN URL: 'stun:'"
    assert report.status == "error"


@pytest.mark.timeout(30)
async def test_closed_ports_fail_fast_with_a_reason() -> None:
    port = free_port_block(1, ["127.0.0.1"])
    refused = f"connection refused by 127.0.0.1:{port} (nothing listens there)"
    settings = NettestSettings(
        relay_url=f"ws://127.0.0.1:{port}",
        ice_servers=(f"turn:127.0.0.1:{port}", f"turn:127.0.0.1:{port}?transport=tcp"),
        turn_username=USER,
        turn_password=PASSWORD,
        relay_timeout_s=2.0,
        turn_timeout_s=2.0,
    )
    started = time.monotonic()
    report = await run_nettest(settings)
    elapsed = time.monotonic() - started
    assert report.relay is not None
    assert report.relay.error == refused
    assert report.findings[1] == Finding(
        "error",
        f"The relay at ws://127.0.0.1:{port}/device is unreachable: {refused}. "
        "Viewers outside your network cannot reach the camera.",
    )
    # Over UDP too: the connected socket hears the ICMP port-unreachable instead of waiting.
    assert [t.error for t in report.turn] == [refused, refused]
    assert elapsed < 1.0


@contextlib.asynccontextmanager
async def silent_tcp_server() -> AsyncIterator[int]:
    """Accepts connections and never says a word."""
    writers: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


@contextlib.contextmanager
def silent_udp_port() -> Iterator[int]:
    """A bound UDP port that reads nothing: requests vanish without an ICMP error."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.mark.timeout(30)
async def test_silent_servers_end_in_each_probes_timeout() -> None:
    async with silent_tcp_server() as tcp_port:
        with silent_udp_port() as udp_port:
            settings = NettestSettings(
                relay_url=f"ws://127.0.0.1:{tcp_port}",
                ice_servers=(f"stun:127.0.0.1:{udp_port}", f"turn:127.0.0.1:{tcp_port}?transport=tcp"),
                turn_username=USER,
                turn_password=PASSWORD,
                relay_timeout_s=1.0,
                stun_timeout_s=0.9,
                turn_timeout_s=0.8,
            )
            started = time.monotonic()
            report = await run_nettest(settings)
            elapsed = time.monotonic() - started
    assert report.relay is not None
    assert report.relay.error == f"no answer from 127.0.0.1:{tcp_port} within 1 s"
    assert report.stun[0].error == "no answer within 0.9 s"
    assert report.turn[0].error == "no answer within 0.8 s over TCP"
    assert report.nat.mapping is NatMapping.UNKNOWN
    assert 1.0 <= elapsed < 2.0  # concurrent: the longest timeout (1 s), not their sum (2.7 s)


# --- STUN and TURN, against real coturn servers -------------------------------------------------


@pytest.fixture(scope="module")
def turn_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("turn-cert"), "turn")


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory, turn_certificate: tuple[Path, Path]) -> Iterator[Coturn]:
    """One coturn for the module: long-term credentials, UDP, TCP and TLS on 127.0.0.1."""
    with running_coturn(
        tmp_path_factory.mktemp("coturn"), users=[(USER, PASSWORD)], certificate=turn_certificate
    ) as server:
        yield server


def _trusting(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


@pytest.mark.timeout(30)
async def test_stun_on_loopback_sees_the_probe_socket_itself(coturn: Coturn) -> None:
    report = await run_nettest(NettestSettings(ice_servers=(coturn.url("stun"),)))
    (result,) = report.stun
    assert result.error is None
    assert result.server == ("127.0.0.1", coturn.port)
    assert (result.rtt_ms or 0) > 0
    assert result.mapped is not None
    (observation,) = report.nat.observations
    assert observation.local == result.mapped  # the probe socket's own address and port ...
    assert result.mapped[0] == "127.0.0.1"
    assert result.mapped[1] > 0
    assert report.nat.mapping is NatMapping.NO_NAT  # ... so nothing translated it
    assert report.findings[-1].text.startswith("The camera has a public address (no NAT)")


@pytest.mark.timeout(30)
async def test_turn_allocations_over_udp_tcp_and_tls(
    coturn: Coturn, turn_certificate: tuple[Path, Path]
) -> None:
    settings = NettestSettings(
        ice_servers=(coturn.url("turn"), coturn.url("turn", transport="tcp"), coturn.url("turns")),
        turn_username=USER,
        turn_password=PASSWORD,
        ssl_context=_trusting(turn_certificate),
    )
    report = await run_nettest(settings)
    assert [t.transport for t in report.turn] == ["udp", "tcp", "tls"]
    for result in report.turn:
        assert result.error is None, result
        assert result.allocated
        assert result.released
        assert result.relayed is not None
        assert result.relayed[0] == "127.0.0.1"
        assert result.mapped is not None
        assert result.mapped[0] == "127.0.0.1"
        assert (result.lifetime_s or 0) > 0
        assert (result.rtt_ms or 0) > 0
    assert report.turn[2].server == ("127.0.0.1", coturn.tls_port)
    assert len({t.relayed for t in report.turn}) == 3


@pytest.mark.timeout(30)
async def test_turn_wrong_password_and_untrusted_certificate(coturn: Coturn) -> None:
    settings = NettestSettings(
        ice_servers=(coturn.url("turn"), coturn.url("turns")),
        turn_username=USER,
        turn_password=WRONG,
    )
    udp, tls = (await run_nettest(settings)).turn
    assert udp.auth_failed
    assert not udp.allocated
    assert udp.error == "the server refused the username or password (401 Unauthorized)"
    assert not tls.allocated
    assert not tls.auth_failed
    assert (tls.tls_error or "").startswith("certificate verify failed: self")  # self(-)signed
    assert tls.error == tls.tls_error


@pytest.mark.timeout(30)
async def test_turn_without_credentials_is_reported_untested(coturn: Coturn) -> None:
    report = await run_nettest(NettestSettings(ice_servers=(coturn.url("turn"), "turn:")))
    (turn,) = report.turn
    assert not turn.tested
    assert turn.error == "no TURN credentials were given"
    assert report.stun[-1].url == "turn:"
    assert "not a STUN or TURN URL" in (report.stun[-1].error or "")


@pytest.mark.timeout(30)
async def test_an_open_turn_relay_is_reported(tmp_path: Path) -> None:
    with running_coturn(tmp_path, users=()) as server:
        settings = NettestSettings(
            ice_servers=(server.url("turn"),), turn_username=USER, turn_password=PASSWORD
        )
        report = await run_nettest(settings)
    (turn,) = report.turn
    assert not turn.allocated
    assert turn.error == "the server allocates without authentication: anyone could use it as a relay"
    assert report.findings[-1].level == "error"


@pytest.mark.timeout(30)
async def test_turn_allocations_are_released(tmp_path: Path) -> None:
    # A quota of one allocation per user: a second allocation (from a new UDP socket, so no
    # connection close frees the first) is refused until the first is gone. Unreleased, it would
    # last its lifetime (600 s); coturn deletes a released one on its next one-second tick.
    with running_coturn(tmp_path, users=[(USER, PASSWORD)], extra_args=["--user-quota=1"]) as server:
        settings = NettestSettings(
            ice_servers=(server.url("turn"),), turn_username=USER, turn_password=PASSWORD
        )
        (first,) = (await run_nettest(settings)).turn
        deadline = time.monotonic() + 5.0
        while True:
            (second,) = (await run_nettest(settings)).turn
            if second.allocated or time.monotonic() > deadline:
                break
            assert second.error == "the server refused the allocation (486 Allocation Quota Reached)"
            await asyncio.sleep(0.2)
    assert first.allocated
    assert first.released
    assert second.allocated, second
    assert second.released


@pytest.mark.timeout(30)
async def test_turn_rest_credentials(tmp_path: Path) -> None:
    shared = "shared with the relay"
    with running_coturn(tmp_path, auth_secret=shared) as server:

        async def allocate(username: str, password: str) -> TurnResult:
            settings = NettestSettings(
                ice_servers=(server.url("turn", transport="tcp"),),
                turn_username=username,
                turn_password=password,
            )
            return (await run_nettest(settings)).turn[0]

        good = await allocate(*rest_credentials(shared))
        forged = await allocate(*rest_credentials("another secret"))
        expired = await allocate(*rest_credentials(shared, ttl_s=-60))
    assert good.allocated, good
    assert good.released
    assert forged.auth_failed
    assert expired.auth_failed


@pytest.mark.timeout(30)
async def test_two_stun_servers_and_an_alternate_address(tmp_path: Path) -> None:
    with (
        running_coturn(tmp_path / "a", addresses=("127.0.0.1", "127.0.0.2")) as rfc5780,
        running_coturn(tmp_path / "b", addresses=("127.0.0.3",)) as plain,
    ):
        report = await run_nettest(NettestSettings(ice_servers=(rfc5780.url("stun"), plain.url("stun"))))
    first, second = report.stun
    assert first.other_address == ("127.0.0.2", rfc5780.port + 1)
    assert second.other_address is None
    destinations = [o.destination for o in report.nat.observations]
    assert destinations == [
        ("127.0.0.1", rfc5780.port),
        ("127.0.0.2", rfc5780.port),  # RFC 5780 test II: the alternate address
        ("127.0.0.2", rfc5780.port + 1),  # test III: the alternate address and port
        ("127.0.0.3", plain.port),
    ]
    # One socket for all: every server saw the same source port, each from the local address the
    # kernel picked to reach it.
    assert len({o.mapped[1] for o in report.nat.observations}) == 1, report.nat.observations
    assert all(o.mapped == o.local for o in report.nat.observations)
    assert report.nat.mapping is NatMapping.NO_NAT


@pytest.mark.timeout(45)
async def test_everything_at_once(
    coturn: Coturn, turn_certificate: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port_block(1, ["127.0.0.1"])
    config = relay_config(server={"port": port, "public_origin": f"http://127.0.0.1:{port}"})
    settings = NettestSettings(
        relay_url=f"ws://127.0.0.1:{port}",
        ice_servers=(
            coturn.url("stun"),
            coturn.url("stuns"),
            coturn.url("turn"),
            coturn.url("turn", transport="tcp"),
            coturn.url("turns"),
        ),
        turn_username=USER,
        turn_password=PASSWORD,
        ssl_context=_trusting(turn_certificate),
    )
    caplog.set_level(logging.DEBUG)
    async with running_relay(config):
        report = await run_nettest(settings)
    assert report.status == "ok", report.human()
    assert [f.level for f in report.findings] == ["ok", "ok", "ok"]
    assert all(t.allocated and t.released for t in report.turn)
    over_tls = report.stun[1]
    assert over_tls.url == coturn.url("stuns")
    assert over_tls.server == ("127.0.0.1", coturn.tls_port)
    assert over_tls.mapped is not None
    assert len(report.nat.observations) == 1  # a mapping over TCP says nothing about UDP's
    assert report.duration_ms < 5000
    assert PASSWORD not in caplog.text
    assert PASSWORD not in json.dumps(report.to_dict())
    print(report.human())
