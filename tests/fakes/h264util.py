"""Decoding helpers: tests prove streams are valid H.264 by decoding them with PyAV."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import av

from petcamd.camera.h264 import NalType, iter_nal_units, nal_type
from petcamd.camera.source import EncodedFrame


def decode(frames: Iterable[EncodedFrame]) -> list[Any]:
    """Decode access units in order; returns the decoded pictures (raises on broken input)."""
    codec: Any = av.CodecContext.create("h264", "r")
    pictures: list[Any] = []
    for frame in frames:
        pictures.extend(codec.decode(av.Packet(frame.data)))
    pictures.extend(codec.decode(None))
    return pictures


def sps_profile(data: bytes) -> tuple[int, int]:
    """(profile_idc, constraint flags byte) of the first SPS in an access unit."""
    for nal in iter_nal_units(data):
        if nal_type(nal) == NalType.SPS:
            return nal[1], nal[2]
    raise AssertionError("no SPS in access unit")


def assert_parameter_sets_before_idr(frame: EncodedFrame) -> None:
    types = [nal_type(nal) for nal in iter_nal_units(frame.data)]
    if NalType.IDR in types:
        before = types[: types.index(NalType.IDR)]
        assert NalType.SPS in before, types
        assert NalType.PPS in before, types
