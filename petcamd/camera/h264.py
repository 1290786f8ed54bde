"""Annex-B helpers: just enough H.264 parsing to keep every IDR decodable on its own.

A viewer can join at any IDR, so each IDR must carry its SPS/PPS in front. libx264 does that with
`repeat-headers=1`; picamera2 does with `repeat=True`; FFmpeg's h264_v4l2m2m and some UVC cameras
do not, so `ParameterSetCache` remembers the last SPS/PPS and puts them back where they are missing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

START_CODE = b"\x00\x00\x00\x01"


class NalType(enum.IntEnum):
    NON_IDR = 1
    IDR = 5
    SEI = 6
    SPS = 7
    PPS = 8
    AUD = 9


def iter_nal_units(data: bytes) -> Iterator[bytes]:
    """Yield each NAL unit's payload (without start code) from an Annex-B byte string.

    Handles both 3- and 4-byte start codes; trailing zero bytes before a 4-byte start code belong to
    the start code, not to the previous NAL unit.
    """
    n = len(data)
    starts: list[tuple[int, int]] = []  # (start-code position, payload position)
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        begin = i - 1 if i > 0 and data[i - 1] == 0 else i
        starts.append((begin, i + 3))
        i = data.find(b"\x00\x00\x01", i + 3)
    for index, (_, payload) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else n
        if end > payload:
            yield data[payload:end]


def nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F if nal else 0


def nal_types(data: bytes) -> list[int]:
    return [nal_type(nal) for nal in iter_nal_units(data)]


def is_idr(data: bytes) -> bool:
    return any(t == NalType.IDR for t in nal_types(data))


def join_nal_units(nals: list[bytes]) -> bytes:
    return b"".join(START_CODE + nal for nal in nals)


class ParameterSetCache:
    """Remembers the last SPS/PPS of a stream and prepends them to IDRs that arrive without.

    Access units that need nothing are returned unchanged (the same bytes object), so a stream that
    already repeats its headers passes through byte for byte.
    """

    def __init__(self) -> None:
        self.sps: bytes | None = None
        self.pps: bytes | None = None

    def fix(self, data: bytes) -> bytes:
        return self.process(data)[0]

    def process(self, data: bytes) -> tuple[bytes, bool]:
        """(access unit with SPS/PPS ahead of any IDR, whether it holds an IDR)."""
        nals = list(iter_nal_units(data))
        types = [nal_type(nal) for nal in nals]
        for nal, kind in zip(nals, types, strict=True):
            if kind == NalType.SPS:
                self.sps = nal
            elif kind == NalType.PPS:
                self.pps = nal
        if NalType.IDR not in types:
            return data, False
        first_idr = types.index(NalType.IDR)
        has_sps = NalType.SPS in types[:first_idr]
        has_pps = NalType.PPS in types[:first_idr]
        if has_sps and has_pps:
            return data, True
        missing = []
        if not has_sps and self.sps is not None:
            missing.append(self.sps)
        if not has_pps and self.pps is not None:
            missing.append(self.pps)
        if not missing:
            return data, True
        # Parameter sets go after an access unit delimiter, if there is one, and before everything else.
        insert_at = 1 if types and types[0] == NalType.AUD else 0
        return join_nal_units(nals[:insert_at] + missing + nals[insert_at:]), True
