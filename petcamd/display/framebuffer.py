"""The pairing code on a Linux framebuffer (HDMI or a small SPI screen), drawn with Pillow.

Geometry comes from sysfs (drivers/video/fbdev/core/fbsysfs.c): ``virtual_size`` is "W,H",
``bits_per_pixel`` and ``stride`` (the line length in bytes) are decimal; the optional ``mode``
("U:1920x1080p-60", empty when the driver keeps no mode) and ``pan`` ("X,Y") place the visible area
inside a larger virtual one. The screen is drawn in grays only, so the image looks the same whatever
order the driver gives the colour channels (sysfs does not tell; the ioctl that would is not needed).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import math
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image, ImageChops, ImageDraw, ImageFont

from petcamd.display.qr import QrMatrix, make_qr

log = logging.getLogger(__name__)

DEFAULT_DEVICE = Path("/dev/fb0")
DEFAULT_SYSFS_ROOT = Path("/sys")
SUPPORTED_BPP = (16, 32)
MIN_SIDE = 96  # below this a phone cannot resolve the modules of a full pairing URL
MAX_SIDE = 16384

INSTRUCTIONS = "Scan with your phone's camera to watch"
WHITE = 255
BLACK = 0

_MODE = re.compile(r"[A-Za-z]:(\d+)x(\d+)")
_BITMAP_EM = 10  # Pillow's built-in bitmap font matches a scalable face of about this size
_BODY_MIN = 12  # the smallest text drawn on purpose; narrow screens may still shrink a line to _BITMAP_EM
_FONT_REFERENCE = "Ag|y"  # tallest and deepest glyphs: one line height for any text


class DisplayUnavailableError(RuntimeError):
    """The display cannot be used; raised while probing, so pairing never starts on a broken screen."""


class PairingDisplay(Protocol):
    """Where the pairing QR code is shown: framebuffer, terminal, or (None) nowhere."""

    def show_pairing(self, url: str, device_name: str, remaining_s: float) -> None: ...

    def clear(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class FramebufferGeometry:
    name: str
    width: int  # the virtual size: the whole buffer that is written
    height: int
    bits_per_pixel: int
    stride: int
    visible_width: int
    visible_height: int
    x_offset: int = 0  # where the visible area starts in the virtual one (panning)
    y_offset: int = 0

    @property
    def frame_bytes(self) -> int:
        return self.stride * self.height


def probe_framebuffer(
    device: Path = DEFAULT_DEVICE, sysfs_root: Path = DEFAULT_SYSFS_ROOT
) -> FramebufferGeometry:
    """Reads and checks everything up front: a bad screen is reported at startup, not mid-pairing."""
    name = device.resolve().name  # udev may give the device a symlinked alias
    attrs = sysfs_root / "class" / "graphics" / name
    try:
        virtual = _read_attr(attrs, "virtual_size")
        bpp_text = _read_attr(attrs, "bits_per_pixel")
        stride_text = _read_attr(attrs, "stride")
    except OSError as exc:
        raise DisplayUnavailableError(
            f"framebuffer {name}: cannot read {exc.filename}: {exc.strerror or exc}"
        ) from None
    try:
        width, height = _pair(virtual)
        bpp = int(bpp_text)
        stride = int(stride_text)
    except ValueError:
        raise DisplayUnavailableError(
            f"framebuffer {name}: unexpected sysfs values virtual_size={virtual!r} "
            f"bits_per_pixel={bpp_text!r} stride={stride_text!r}"
        ) from None
    if bpp not in SUPPORTED_BPP:
        raise DisplayUnavailableError(
            f"framebuffer {name}: {bpp} bits per pixel is not supported (only 16 and 32)"
        )
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise DisplayUnavailableError(f"framebuffer {name}: implausible size {width}x{height}")
    row_bytes = width * bpp // 8
    if stride == 0:  # some drivers leave line_length unset for unpadded lines
        stride = row_bytes
    if stride < row_bytes:
        raise DisplayUnavailableError(
            f"framebuffer {name}: stride {stride} is shorter than a {width}-pixel line at {bpp} bpp"
        )
    visible_width, visible_height = _visible_size(attrs, width, height)
    x_offset, y_offset = _pan(attrs, width - visible_width, height - visible_height)
    if min(visible_width, visible_height) < MIN_SIDE:
        raise DisplayUnavailableError(
            f"framebuffer {name}: {visible_width}x{visible_height} is too small for a scannable code"
        )
    try:
        os.close(os.open(device, os.O_WRONLY | os.O_CLOEXEC))
    except OSError as exc:
        raise DisplayUnavailableError(
            f"framebuffer {name}: cannot open {device} for writing: {exc.strerror or exc}"
        ) from None
    return FramebufferGeometry(
        name=name,
        width=width,
        height=height,
        bits_per_pixel=bpp,
        stride=stride,
        visible_width=visible_width,
        visible_height=visible_height,
        x_offset=x_offset,
        y_offset=y_offset,
    )


def _read_attr(attrs: Path, attr: str) -> str:
    return (attrs / attr).read_text(encoding="ascii", errors="replace").strip()


def _pair(text: str) -> tuple[int, int]:
    first, second = text.split(",")
    return int(first), int(second)


def _visible_size(attrs: Path, width: int, height: int) -> tuple[int, int]:
    """The current mode when the driver reports one that fits, else the whole virtual area."""
    try:
        mode = _read_attr(attrs, "mode")
    except OSError:
        return width, height
    match = _MODE.match(mode)
    if match is None:
        return width, height
    mode_width, mode_height = int(match[1]), int(match[2])
    if 0 < mode_width <= width and 0 < mode_height <= height:
        return mode_width, mode_height
    return width, height


def _pan(attrs: Path, max_x: int, max_y: int) -> tuple[int, int]:
    try:
        x, y = _pair(_read_attr(attrs, "pan"))
    except (OSError, ValueError):
        return 0, 0
    if 0 <= x <= max_x and 0 <= y <= max_y:
        return x, y
    return 0, 0


def pack_frame(image: Image.Image, bits_per_pixel: int, stride: int) -> bytes:
    """Pixels in the framebuffer's layout: XRGB8888 or RGB565, little-endian, lines padded to stride."""
    rgb = image.convert("RGB")
    width, _ = rgb.size
    if bits_per_pixel == 32:
        raw = rgb.tobytes("raw", "BGRX")
        row_bytes = width * 4
    elif bits_per_pixel == 16:
        red, green, blue = rgb.split()
        # the two bytes of each little-endian RGB565 pixel, built from bit fields that never overlap,
        # so adding them is an OR; all of it runs in Pillow's C code, fast enough for 1920x1080
        low = ImageChops.add(green.point(_GREEN_LOW), blue.point(_BLUE_LOW))
        high = ImageChops.add(red.point(_RED_HIGH), green.point(_GREEN_HIGH))
        raw = Image.merge("LA", (low, high)).tobytes()
        row_bytes = width * 2
    else:
        raise ValueError(f"unsupported bits per pixel: {bits_per_pixel}")
    if stride == row_bytes:
        return raw
    padding = bytes(stride - row_bytes)
    view = memoryview(raw)
    return b"".join(
        part for start in range(0, len(raw), row_bytes) for part in (view[start : start + row_bytes], padding)
    )


_GREEN_LOW = [((value >> 2) & 0x07) << 5 for value in range(256)]
_BLUE_LOW = [value >> 3 for value in range(256)]
_RED_HIGH = [(value >> 3) << 3 for value in range(256)]
_GREEN_HIGH = [value >> 5 for value in range(256)]


@dataclass(frozen=True, slots=True)
class PairingScreen:
    image: Image.Image  # mode "L", the visible size
    countdown_box: tuple[int, int, int, int]  # redrawn alone when only the remaining time changes
    countdown_size: int
    module: int  # pixels per QR module
    side_by_side: bool


def countdown_text(remaining_s: float) -> str:
    minutes = max(1, math.ceil(remaining_s / 60))
    return f"Code expires in {minutes} minute{'s' if minutes != 1 else ''}"


@dataclass(frozen=True, slots=True)
class _Style:
    margin: int
    body: int
    title: int
    gap: int  # between the name, the code and the instructions

    @classmethod
    def for_screen(cls, width: int, height: int) -> _Style:
        body = max(_BODY_MIN, height // 30)
        return cls(
            margin=max(4, min(width, height) // 48),
            body=body,
            title=body * 3 // 2,
            gap=max(2, body // 2),
        )

    def compact(self) -> _Style:
        """For screens where every line of pixels goes to the code: tight gaps, a smaller name."""
        return _Style(margin=2, body=self.body, title=self.body, gap=2)


@dataclass(frozen=True, slots=True)
class _Column:
    """The text, wrapped for one column width; `countdown` is the height reserved for the time."""

    title: list[Image.Image]
    instructions: list[Image.Image]
    countdown_size: int
    countdown: int
    countdown_width: int
    style: _Style

    def blocks(self, code: Image.Image | None = None) -> list[Image.Image | int]:
        """Images and the spaces between them, top to bottom, ending above the countdown."""
        gap = self.style.gap
        blocks: list[Image.Image | int] = [*_spaced(self.title), gap]
        if code is not None:
            blocks += [code, gap]
        if self.instructions:
            blocks += [*_spaced(self.instructions), _leading(self.countdown_size)]
        return blocks

    def height(self, code: Image.Image | None = None) -> int:
        return sum(_height(block) for block in self.blocks(code)) + self.countdown

    @property
    def width(self) -> int:
        return max(self.countdown_width, *(line.width for line in (*self.title, *self.instructions)))


def _spaced(lines: list[Image.Image]) -> list[Image.Image | int]:
    """Lines with the leading of their own size between them (all lines of a list share a size)."""
    blocks: list[Image.Image | int] = []
    for line in lines:
        if blocks:
            blocks.append(max(1, line.height // 6))
        blocks.append(line)
    return blocks


def _leading(size: int) -> int:
    return max(1, _line_height(size) // 6)


def _height(block: Image.Image | int) -> int:
    return block if isinstance(block, int) else block.height


def _column(
    device_name: str,
    remaining_s: float,
    style: _Style,
    width: int,
    max_lines: int,
    *,
    instructions: bool = True,
) -> _Column:
    title_size, title = _wrap(device_name.strip() or "petcam", style.title, width, max_lines=2)
    body_size, hint = _wrap(INSTRUCTIONS, style.body, width, max_lines) if instructions else (0, [])
    # sized for a three-digit count, so the layout stays put while the minutes count down
    countdown_size, countdown = _wrap(
        countdown_text(max(remaining_s, 6000.0)), style.body, width, max_lines=2
    )
    return _Column(
        title=[_render_line(line, title_size) for line in title],
        instructions=[_render_line(line, body_size) for line in hint],
        countdown_size=countdown_size,
        countdown=_paragraph_height(len(countdown), countdown_size),
        countdown_width=max(_text_width(line, countdown_size) for line in countdown),
        style=style,
    )


def _paragraph_height(lines: int, size: int) -> int:
    return lines * _line_height(size) + (lines - 1) * _leading(size)


GOOD_MODULE = 3  # pixels per module; below this, codes on small screens get hard for phones to read


@dataclass(frozen=True, slots=True)
class _Layout:
    module: int
    column: _Column
    side_by_side: bool = False


def render_pairing_screen(
    url: str, device_name: str, remaining_s: float, size: tuple[int, int]
) -> PairingScreen:
    """Name above the code, instructions and time below, the code as large as the rest allows.

    Small screens get tighter spacing first, then (landscape) the text beside the code, and last
    lose the instructions, whichever first gives modules of GOOD_MODULE pixels.
    """
    width, height = size
    matrix = make_qr(url)
    normal = _Style.for_screen(width, height)
    compact = normal.compact()
    chosen = _stacked(matrix.size, device_name, remaining_s, size, normal)
    fallbacks: list[Callable[[], _Layout | None]] = [
        lambda: _stacked(matrix.size, device_name, remaining_s, size, compact),
        lambda: _beside(matrix.size, device_name, remaining_s, size, compact),
        lambda: _stacked(matrix.size, device_name, remaining_s, size, compact, instructions=False),
    ]
    for build in fallbacks:
        if chosen.module >= GOOD_MODULE:
            break
        layout = build()
        if layout is not None and layout.module > chosen.module:
            chosen = layout
    column, margin = chosen.column, chosen.column.style.margin
    code = _qr_image(matrix, max(1, chosen.module))

    canvas = Image.new("L", size, WHITE)
    if chosen.side_by_side:
        # the code's own quiet zone separates it from the text
        column_width = column.width
        left = (width - code.width - column_width) // 2
        canvas.paste(code, (left, (height - code.height) // 2))
        box = _paste_column(canvas, column.blocks(), left + code.width, column_width, column.height())
    else:
        box = _paste_column(canvas, column.blocks(code), margin, width - 2 * margin, column.height(code))
    box = (box[0], box[1], box[2], box[1] + column.countdown)
    draw_countdown(canvas, box, column.countdown_size, remaining_s)
    return PairingScreen(
        image=canvas,
        countdown_box=box,
        countdown_size=column.countdown_size,
        module=chosen.module,
        side_by_side=chosen.side_by_side,
    )


def _stacked(
    modules: int,
    device_name: str,
    remaining_s: float,
    size: tuple[int, int],
    style: _Style,
    *,
    instructions: bool = True,
) -> _Layout:
    width, height = size
    column = _column(
        device_name, remaining_s, style, width - 2 * style.margin, max_lines=2, instructions=instructions
    )
    space = min(height - 2 * style.margin - column.height() - style.gap, width)  # a gap each side
    return _Layout(module=max(0, space // modules), column=column)


def _beside(
    modules: int, device_name: str, remaining_s: float, size: tuple[int, int], style: _Style
) -> _Layout | None:
    width, height = size
    if width <= height:
        return None
    for module in range(height // modules, 0, -1):
        column_width = width - module * modules - style.margin
        if column_width < 8 * style.body:
            continue
        column = _column(device_name, remaining_s, style, column_width, max_lines=3)
        if column.height() <= height - 2 * style.margin:
            return _Layout(module=module, column=column, side_by_side=True)
    return None


def _paste_column(
    canvas: Image.Image, blocks: list[Image.Image | int], left: int, width: int, height: int
) -> tuple[int, int, int, int]:
    """Centres the blocks in the column; returns the box below them, where the countdown goes."""
    y = max(0, (canvas.height - height) // 2)
    for block in blocks:
        if not isinstance(block, int):
            canvas.paste(block, (left + (width - block.width) // 2, y))
        y += _height(block)
    return left, y, left + width, y


def draw_countdown(image: Image.Image, box: tuple[int, int, int, int], size: int, remaining_s: float) -> None:
    left, top, right, bottom = box
    ImageDraw.Draw(image).rectangle((left, top, right - 1, bottom - 1), fill=WHITE)
    capacity = max(1, (bottom - top + _leading(size)) // (_line_height(size) + _leading(size)))
    size, lines = _wrap(countdown_text(remaining_s), size, right - left, capacity)
    y = top + (bottom - top - _paragraph_height(len(lines), size)) // 2
    for text in lines:
        line = _render_line(text, size)
        image.paste(line, (left + (right - left - line.width) // 2, y))
        y += line.height + _leading(size)


def _qr_image(matrix: QrMatrix, module: int) -> Image.Image:
    image = Image.new("L", (matrix.size, matrix.size), WHITE)
    image.putdata([BLACK if dark else WHITE for row in matrix.modules for dark in row])
    side = matrix.size * module
    return image.resize((side, side), Image.Resampling.NEAREST)


@dataclass(frozen=True, slots=True)
class _Face:
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    scale: int  # whole-pixel enlargement after drawing
    charset: str  # what the face has glyphs for

    def printable(self, text: str) -> str:
        """Accents dropped where the face lacks the accented letter; anything else becomes '?'."""
        chars: list[str] = []
        for char in text:
            if char.encode(self.charset, "ignore"):
                chars.append(char)
                continue
            plain = _PLAIN.get(char) or unicodedata.normalize("NFKD", char)
            chars.append(plain.encode(self.charset, "ignore").decode(self.charset) or "?")
        return "".join(chars)


_PLAIN = {
    "\u00df": "ss",
    "\u00e6": "ae",
    "\u00c6": "AE",
    "\u0153": "oe",
    "\u0152": "OE",
    "\u00f8": "o",
    "\u00d8": "O",
    "\u0142": "l",
    "\u0141": "L",
}


@functools.lru_cache(maxsize=32)
def _font(size: int) -> _Face:
    """Pillow's default face at about `size` pixels.

    Pillow 10.1+ with FreeType scales its default face (Aileron, ASCII only) to any size; older
    Pillow (Debian bookworm ships 9.4) has only a fixed 6x11 Latin-1 bitmap font, enlarged here
    with square pixels so it stays crisp.
    """
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:
        font = ImageFont.load_default()
    if isinstance(font, ImageFont.FreeTypeFont):
        return _Face(font, 1, "ascii")
    return _Face(font, max(1, round(size / _BITMAP_EM)), "latin-1")


@functools.lru_cache(maxsize=32)
def _line_height(size: int) -> int:
    face = _font(size)
    _, top, _, bottom = _MEASURE.textbbox((0, 0), _FONT_REFERENCE, font=face.font)
    return math.ceil(bottom - top) * face.scale


@functools.lru_cache(maxsize=1024)
def _text_width(text: str, size: int) -> int:
    face = _font(size)
    left, _, right, _ = _MEASURE.textbbox((0, 0), face.printable(text), font=face.font)
    return math.ceil(right - left) * face.scale


def _render_line(text: str, size: int) -> Image.Image:
    face = _font(size)
    text = face.printable(text)
    left, _, right, _ = _MEASURE.textbbox((0, 0), text, font=face.font)
    _, top, _, bottom = _MEASURE.textbbox((0, 0), _FONT_REFERENCE, font=face.font)
    line = Image.new("L", (max(1, math.ceil(right - left)), math.ceil(bottom - top)), WHITE)
    ImageDraw.Draw(line).text((-left, -top), text, font=face.font, fill=BLACK)
    if face.scale > 1:
        line = line.resize((line.width * face.scale, line.height * face.scale), Image.Resampling.NEAREST)
    return line


_MEASURE = ImageDraw.Draw(Image.new("L", (1, 1)))


def _wrap(text: str, size: int, max_width: int, max_lines: int) -> tuple[int, list[str]]:
    """Wraps at `size`, shrinking only when that takes too many lines; truncates at the smallest size."""
    while True:
        lines: list[str] = []
        for word in text.split():
            candidate = f"{lines[-1]} {word}" if lines else word
            if lines and _text_width(candidate, size) <= max_width:
                lines[-1] = candidate
            else:
                lines.append(word)
        fits = all(_text_width(line, size) <= max_width for line in lines)
        if (fits and len(lines) <= max_lines) or size <= _BITMAP_EM:
            break
        size = max(_BITMAP_EM, size - max(1, size // 10))
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], " ".join(lines[max_lines - 1 :])]
    return size, [_fit_text(line, size, max_width) for line in lines]


def _fit_text(text: str, size: int, max_width: int) -> str:
    if _text_width(text, size) <= max_width:
        return text
    while text and _text_width(text + "...", size) > max_width:
        text = text[:-1]
    return text.rstrip() + "..."


class FramebufferDisplay:
    """Shows the pairing code on /dev/fbN; falls back to `fallback` if the screen fails mid-run."""

    def __init__(
        self,
        device: Path = DEFAULT_DEVICE,
        sysfs_root: Path = DEFAULT_SYSFS_ROOT,
        *,
        fallback: PairingDisplay | None = None,
    ) -> None:
        self.device = device
        self.geometry = probe_framebuffer(device, sysfs_root)
        self.fallback = fallback
        self._failed = False
        self._frame: Image.Image | None = None  # what the screen shows now, the whole virtual area
        self._screen: PairingScreen | None = None
        self._shown: bytes | None = None  # digest of what is shown; the URL itself is not kept
        self._countdown = ""

    def show_pairing(self, url: str, device_name: str, remaining_s: float) -> None:
        if self._failed:
            self._show_on_fallback(url, device_name, remaining_s)
            return
        shown = hashlib.sha256(f"{url}\0{device_name}".encode()).digest()
        try:
            if shown == self._shown and self._frame is not None and self._screen is not None:
                self._refresh_countdown(self._frame, self._screen, remaining_s)
            else:
                self._shown = None
                self._draw(url, device_name, remaining_s)
                self._shown = shown
        except OSError as exc:
            log.warning("framebuffer %s: cannot show the pairing code: %s", self.geometry.name, exc)
            self._fail()
            self._show_on_fallback(url, device_name, remaining_s)
        except Exception:  # a screen must never take pairing down with it
            log.exception("framebuffer %s: drawing the pairing screen failed", self.geometry.name)
            self._fail()
            self._show_on_fallback(url, device_name, remaining_s)

    def clear(self, reason: str) -> None:
        if self._failed:
            if self.fallback is not None:
                self.fallback.clear(reason)
            return
        self._frame = self._screen = self._shown = None
        try:
            self._write_frame(bytes(self.geometry.frame_bytes))
        except OSError as exc:
            log.warning("framebuffer %s: cannot blank the screen: %s", self.geometry.name, exc)
            self._fail()
            if self.fallback is not None:
                self.fallback.clear(reason)

    def _draw(self, url: str, device_name: str, remaining_s: float) -> None:
        geometry = self.geometry
        screen = render_pairing_screen(
            url, device_name, remaining_s, (geometry.visible_width, geometry.visible_height)
        )
        frame = Image.new("L", (geometry.width, geometry.height), BLACK)
        frame.paste(screen.image, (geometry.x_offset, geometry.y_offset))
        self._write_frame(pack_frame(frame, geometry.bits_per_pixel, geometry.stride))
        self._frame, self._screen, self._countdown = frame, screen, countdown_text(remaining_s)

    def _refresh_countdown(self, frame: Image.Image, screen: PairingScreen, remaining_s: float) -> None:
        """Rewrites only the lines under the countdown: a few kilobytes instead of the whole screen."""
        text = countdown_text(remaining_s)
        if text == self._countdown:
            return
        geometry = self.geometry
        _, top, _, bottom = screen.countdown_box
        draw_countdown(screen.image, screen.countdown_box, screen.countdown_size, remaining_s)
        frame.paste(
            screen.image.crop((0, top, screen.image.width, bottom)),
            (geometry.x_offset, geometry.y_offset + top),
        )
        first, last = geometry.y_offset + top, geometry.y_offset + bottom
        band = frame.crop((0, first, geometry.width, last))
        self._write_frame(pack_frame(band, geometry.bits_per_pixel, geometry.stride), first * geometry.stride)
        self._countdown = text

    def _fail(self) -> None:
        self._failed = True
        self._frame = self._screen = self._shown = None
        if self.fallback is None:
            log.warning("no other display configured: use `petcamctl pair` to see the pairing code")
        else:
            log.warning("showing pairing codes on the console from now on")

    def _show_on_fallback(self, url: str, device_name: str, remaining_s: float) -> None:
        if self.fallback is not None:
            self.fallback.show_pairing(url, device_name, remaining_s)

    def _write_frame(self, data: bytes, offset: int = 0) -> None:
        """Every write goes through here: open, write at the offset, close (a plain file in tests)."""
        fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            written = 0
            while written < len(view):
                count = os.pwrite(fd, view[written:], offset + written)
                if count == 0:
                    raise OSError(errno.ENOSPC, "framebuffer is smaller than its geometry says")
                written += count
        finally:
            os.close(fd)
