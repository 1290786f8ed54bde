"""Annex-B helpers, including the SPS/PPS repair h264_v4l2m2m streams need."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from petcamd.camera.h264 import NalType, ParameterSetCache, is_idr, iter_nal_units, join_nal_units, nal_types

SPS = bytes([0x67, 0x42, 0xC0, 0x1E, 0xAB])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
IDR = bytes([0x65, 0x88, 0x84, 0x00, 0x10])
P = bytes([0x41, 0x9A, 0x02, 0x03])
AUD = bytes([0x09, 0xF0])

# NAL payloads never contain 00 00 0x (x <= 3): emulation prevention guarantees it.
nal_payload = st.binary(min_size=1, max_size=40).map(
    lambda b: bytes([0x20 | (b[0] & 0x1F) | 0x01]) + b[1:].replace(b"\x00\x00", b"\x00\x03\x00")
)


def test_split_with_three_and_four_byte_start_codes() -> None:
    data = b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x01" + PPS + b"\x00\x00\x00\x01" + IDR
    assert list(iter_nal_units(data)) == [SPS, PPS, IDR]
    assert nal_types(data) == [NalType.SPS, NalType.PPS, NalType.IDR]
    assert is_idr(data)
    assert not is_idr(join_nal_units([P]))
    assert list(iter_nal_units(b"")) == []


@given(st.lists(nal_payload, min_size=1, max_size=8))
def test_split_inverts_join(nals: list[bytes]) -> None:
    nals = [n.rstrip(b"\x00") or b"\x21" for n in nals]  # trailing zeros belong to the next start code
    assert list(iter_nal_units(join_nal_units(nals))) == nals


def test_complete_access_units_pass_through_as_the_same_object() -> None:
    cache = ParameterSetCache()
    first = join_nal_units([SPS, PPS, IDR])
    assert cache.fix(first) is first
    delta = join_nal_units([P])
    assert cache.process(delta) == (delta, False)


def test_missing_parameter_sets_are_restored_before_idr() -> None:
    cache = ParameterSetCache()
    cache.fix(join_nal_units([SPS, PPS, IDR]))
    bare = join_nal_units([IDR])
    assert cache.process(bare) == (join_nal_units([SPS, PPS, IDR]), True)
    with_aud = join_nal_units([AUD, PPS, IDR])
    assert cache.fix(with_aud) == join_nal_units([AUD, SPS, PPS, IDR])


def test_idr_before_any_parameter_set_is_left_alone() -> None:
    bare = join_nal_units([IDR])
    assert ParameterSetCache().process(bare) == (bare, True)


def test_latest_parameter_sets_win() -> None:
    cache = ParameterSetCache()
    cache.fix(join_nal_units([SPS, PPS, IDR]))
    new_sps = bytes([0x67, 0x42, 0xC0, 0x28, 0x01])
    cache.fix(join_nal_units([new_sps, PPS, IDR]))
    assert cache.fix(join_nal_units([IDR])) == join_nal_units([new_sps, PPS, IDR])
