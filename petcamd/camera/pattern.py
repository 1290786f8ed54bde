"""A cheap moving test pattern with a visible clock, built straight into YUV 4:2:0 planes.

No numpy (Debian's python3-av does not pull it in) and little CPU (it also runs on a Pi Zero 2 W):
each band of the picture is one pre-rendered row, twice as wide as the frame, so moving it is a
slice plus a bytes multiplication (memcpy speed); only the small clock box is drawn per frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import av
import av.video.plane
from PIL import Image, ImageDraw, ImageFont

# SMPTE-like colour bars as (Y, U, V): white, yellow, cyan, green, magenta, red, blue, black.
_BARS = [
    (235, 128, 128),
    (210, 16, 146),
    (170, 166, 16),
    (145, 54, 34),
    (106, 202, 222),
    (81, 90, 240),
    (41, 240, 110),
    (16, 128, 128),
]
_CLOCK_TEMPLATE = "00:00:00.000 #000000"


@dataclass(frozen=True, slots=True)
class _Band:
    """Rows [top, bottom) of the luma plane show `luma` (period = frame width) moving by `speed`."""

    top: int
    bottom: int
    speed: int  # pixels per frame; negative moves left
    luma: bytes  # 2 * width
    cb: bytes  # 2 * (width // 2)
    cr: bytes


def _bars_row(width: int, component: int) -> bytes:
    row = bytearray(width)
    for x in range(width):
        row[x] = _BARS[x * len(_BARS) // width][component]
    return bytes(row) * 2


def _ramp_row(width: int) -> bytes:
    return bytes(16 + (219 * x) // max(1, width - 1) for x in range(width)) * 2


class TestPattern:
    """Renders frame `n` of the pattern into a fresh yuv420p VideoFrame."""

    __test__ = False  # not a pytest class

    def __init__(self, width: int, height: int) -> None:
        if width % 2 or height % 2 or width < 16 or height < 16:
            raise ValueError(f"test pattern needs an even size of at least 16x16, got {width}x{height}")
        self.width = width
        self.height = height
        cw = width // 2
        split = (height * 2 // 3) & ~1
        self._bands = [
            _Band(0, split, 2, _bars_row(width, 0), _bars_row(cw, 1), _bars_row(cw, 2)),
            _Band(split, height, -4, _ramp_row(width), bytes([128]) * width, bytes([128]) * width),
        ]
        self._font = ImageFont.load_default()
        _, _, right, bottom = self._font.getbbox(_CLOCK_TEMPLATE)
        self._text_size = (int(right) + 4, int(bottom) + 4)
        scale = max(1, height // 240)
        box_w = min(self._text_size[0] * scale, width - 4) & ~1
        box_h = min(self._text_size[1] * scale, height - 4) & ~1
        self._box = (2, 2, box_w, box_h)  # x, y, w, h: even, so chroma lines up

    def render(self, index: int, wall_time: float | None = None) -> av.VideoFrame:
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        luma, cb, cr = self._planes(index)
        self._draw_clock(luma, cb, cr, index, time.time() if wall_time is None else wall_time)
        cw = self.width // 2
        for plane, data, width in zip(frame.planes, (luma, cb, cr), (self.width, cw, cw), strict=True):
            _fill_plane(plane, data, width)
        return frame

    def _planes(self, index: int) -> tuple[bytearray, bytearray, bytearray]:
        """Luma and chroma with the bands shifted for frame `index` (unpadded rows)."""
        w, cw = self.width, self.width // 2
        luma = bytearray()
        cb = bytearray()
        cr = bytearray()
        for band in self._bands:
            offset = (band.speed * index) % w
            coffset = offset // 2
            luma += band.luma[w - offset : 2 * w - offset] * (band.bottom - band.top)
            rows = (band.bottom - band.top) // 2
            cb += band.cb[cw - coffset : 2 * cw - coffset] * rows
            cr += band.cr[cw - coffset : 2 * cw - coffset] * rows
        return luma, cb, cr

    def _draw_clock(
        self,
        luma: bytearray,
        cb: bytearray,
        cr: bytearray,
        index: int,
        wall_time: float,
    ) -> None:
        local = time.localtime(wall_time)
        millis = int(wall_time * 1000) % 1000
        text = f"{local.tm_hour:02}:{local.tm_min:02}:{local.tm_sec:02}.{millis:03} #{index % 1_000_000:06}"
        image = Image.new("L", self._text_size, 16)
        ImageDraw.Draw(image).text((2, 2), text, fill=235, font=self._font)
        x, y, bw, bh = self._box
        if image.size != (bw, bh):
            image = image.resize((bw, bh), Image.Resampling.NEAREST)
        pixels = image.tobytes()
        w, cw = self.width, self.width // 2
        for row in range(bh):
            start = (y + row) * w + x
            luma[start : start + bw] = pixels[row * bw : (row + 1) * bw]
        grey = bytes([128]) * (bw // 2)
        for row in range(bh // 2):
            start = (y // 2 + row) * cw + x // 2
            cb[start : start + bw // 2] = grey
            cr[start : start + bw // 2] = grey


def _fill_plane(plane: av.video.plane.VideoPlane, data: bytearray, width: int) -> None:
    line = plane.line_size
    if line == width:
        plane.update(bytes(data))
        return
    height = len(data) // width
    padded = bytearray(line * height)
    for row in range(height):
        padded[row * line : row * line + width] = data[row * width : (row + 1) * width]
    plane.update(bytes(padded))
