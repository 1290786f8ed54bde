"""Pairing URL: round trip, strict parsing, QR size."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from petcamd.display.qr import make_qr
from petcamd.protocol.pairing_url import (
    PairingPayload,
    PairingUrlError,
    decode_pairing_url,
    encode_pairing_url,
)

PAYLOAD = PairingPayload(
    device_id="abcdefghijklmnop",
    device_key=os.urandom(32),
    secret=os.urandom(16),
    expires_at=1_800_000_000,
    addresses=("192.168.1.20", "fd00::20"),
    port=8080,
    relay_url="wss://relay.example.org/",
    name="Kitchen cam & more",
)


def test_round_trip() -> None:
    url = encode_pairing_url("http://192.168.1.20:8080", PAYLOAD)
    assert url.startswith("http://192.168.1.20:8080/#v=1&")
    assert decode_pairing_url(url) == PAYLOAD


def test_repr_hides_the_secret() -> None:
    assert PAYLOAD.secret.hex() not in repr(PAYLOAD)
    assert "secret" not in repr(PAYLOAD)


def test_fits_a_small_screen_qr() -> None:
    url = encode_pairing_url("http://192.168.100.200:8080", dataclasses.replace(PAYLOAD, relay_url=""))
    qr = make_qr(url)
    assert len(url) < 230
    assert qr.version <= 10


@pytest.mark.parametrize(
    "mutate",
    [
        lambda u: u.split("#")[0],
        lambda u: u.replace("v=1", "v=2"),
        lambda u: u.replace("&p=8080", ""),
        lambda u: u.replace("&p=8080", "&p=99999"),
        lambda u: u.replace("id=abcdefghijklmnop", "id=ABC"),
        lambda u: u + "&v=1",
        lambda u: u.replace("a=192.168.1.20", "a=not-an-ip"),
        lambda u: u + "&x=" + "y" * 600,
    ],
)
def test_rejects_malformed(mutate: object) -> None:
    url = encode_pairing_url("http://h:1", PAYLOAD)
    with pytest.raises(PairingUrlError):
        decode_pairing_url(mutate(url))  # type: ignore[operator]


@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes(text: str) -> None:
    with contextlib.suppress(PairingUrlError):
        decode_pairing_url("http://h/#" + text)
