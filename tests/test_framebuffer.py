"""The framebuffer display against a fake sysfs tree and a plain file standing in for /dev/fb0.

What the file holds after show_pairing is unpacked here byte by byte (not with the display's own
packing code) and read by a real QR decoder, zbar's zbarimg.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from petcamd.display.framebuffer import (
    GOOD_MODULE,
    DisplayUnavailableError,
    FramebufferDisplay,
    PairingDisplay,
    countdown_text,
    pack_frame,
    probe_framebuffer,
    render_pairing_screen,
)
from petcamd.protocol.pairing_url import PairingPayload, b64url, encode_pairing_url

DEVICE_KEY = bytes(range(7, 39))
PAIRING_SECRET = bytes(range(200, 216))
KEY = b64url(DEVICE_KEY)  # 43 characters
SECRET = b64url(PAIRING_SECRET)  # 22 characters
URL = encode_pairing_url(
    "http://192.168.1.20:8080",
    PairingPayload(
        device_id="mfrggzdfmztwq2lk",
        device_key=DEVICE_KEY,
        secret=PAIRING_SECRET,
        expires_at=1800000000,
        addresses=("192.168.1.20", "fd00:1234:5678:9abc::20"),
        port=8080,
        name="Kitchen cam",
    ),
)


INTERNET_URL = encode_pairing_url(
    "https://relay.petcam.example.org",
    PairingPayload(
        device_id="mfrggzdfmztwq2lk",
        device_key=DEVICE_KEY,
        secret=PAIRING_SECRET,
        expires_at=1800000000,
        addresses=("192.168.1.20", "fd00:1234:5678:9abc::20"),
        port=8080,
        relay_url="wss://relay.petcam.example.org/v1/device",
        name="Wohnzimmer-Kamera \u00fcber dem Sofa",
    ),
)


class FakeFramebuffer:
    def __init__(self, root: Path, width: int, height: int, bpp: int, stride: int, name: str = "fb0") -> None:
        self.width, self.height, self.bpp, self.stride = width, height, bpp, stride
        self.sysfs = root / "sys"
        self.attrs = self.sysfs / "class" / "graphics" / name
        self.attrs.mkdir(parents=True)
        # the kernel's own formats (fbsysfs.c): "%d,%d\n" and "%d\n"
        (self.attrs / "virtual_size").write_text(f"{width},{height}\n")
        (self.attrs / "bits_per_pixel").write_text(f"{bpp}\n")
        (self.attrs / "stride").write_text(f"{stride}\n")
        self.device = root / name
        self.device.write_bytes(b"\xa5" * (stride * height))  # garbage: every byte must be rewritten

    def display(self, fallback: PairingDisplay | None = None) -> FramebufferDisplay:
        return FramebufferDisplay(self.device, self.sysfs, fallback=fallback)

    def read_image(self) -> Image.Image:
        """Decodes the file by hand: XRGB8888 (B, G, R, X bytes) or RGB565, little-endian."""
        data = self.device.read_bytes()
        assert len(data) == self.stride * self.height, "the framebuffer file changed size"
        pixels = bytearray()
        for y in range(self.height):
            row = data[y * self.stride : y * self.stride + self.width * self.bpp // 8]
            if self.bpp == 32:
                for blue, green, red, _ in struct.iter_unpack("<4B", row):
                    pixels += bytes((red, green, blue))
            else:
                for (value,) in struct.iter_unpack("<H", row):
                    red5, green6, blue5 = value >> 11, (value >> 5) & 0x3F, value & 0x1F
                    pixels += bytes((red5 * 255 // 31, green6 * 255 // 63, blue5 * 255 // 31))
        return Image.frombytes("RGB", (self.width, self.height), bytes(pixels))


@pytest.fixture(scope="session")
def zbarimg() -> list[str]:
    path = shutil.which("zbarimg")
    if path is None:
        pytest.fail("zbarimg not found: install zbar-tools (apt-get install zbar-tools); CI installs it")
    command = [path, "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable"]
    usage = subprocess.run([path, "--help"], capture_output=True, text=True, check=False).stdout
    if "--nodbus" in usage:  # otherwise it tries to announce every result on the system bus
        command.append("--nodbus")
    return command


def decode_qr(zbarimg: list[str], image: Image.Image, png: Path) -> list[str]:
    image.save(png)
    result = subprocess.run([*zbarimg, str(png)], capture_output=True, check=False, timeout=60)
    assert result.returncode in (0, 4), result.stderr.decode(errors="replace")  # 4: nothing found
    return result.stdout.decode().splitlines()


@pytest.mark.parametrize(
    ("bpp", "width", "height", "stride"),
    [
        (16, 320, 240, 704),  # lines padded 64 bytes beyond the pixels
        (32, 320, 240, 1344),
        (16, 1280, 720, 2560),
        (32, 1280, 720, 5120),
        (16, 240, 320, 512),  # portrait SPI screen
    ],
)
def test_screen_decodes_to_the_exact_url_and_blanks(
    tmp_path: Path, zbarimg: list[str], bpp: int, width: int, height: int, stride: int
) -> None:
    fb = FakeFramebuffer(tmp_path, width, height, bpp, stride)
    display = fb.display()
    assert len(URL) >= 190

    display.show_pairing(URL, "Kitchen cam", 540)

    assert decode_qr(zbarimg, fb.read_image(), tmp_path / "screen.png") == [URL]
    data = fb.device.read_bytes()
    for y in range(height):
        assert data[y * stride + width * bpp // 8 : (y + 1) * stride].count(0) == stride - width * bpp // 8

    display.clear("paired")

    assert fb.device.read_bytes() == bytes(stride * height)
    assert fb.read_image().getextrema() == ((0, 0), (0, 0), (0, 0))


def test_packing_puts_channels_where_the_kernel_expects_them() -> None:
    image = Image.new("RGB", (3, 1))
    image.putdata([(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    assert pack_frame(image, 32, 16) == bytes([0, 0, 255, 0, 0, 255, 0, 0, 255, 0, 0, 0, 0, 0, 0, 0])
    # RGB565: red 0xF800, green 0x07E0, blue 0x001F, low byte first
    assert pack_frame(image, 16, 8) == bytes([0x00, 0xF8, 0xE0, 0x07, 0x1F, 0x00, 0, 0])
    grey = Image.new("RGB", (1, 1), (0x84, 0x82, 0x84))
    assert pack_frame(grey, 16, 2) == struct.pack("<H", (0x84 >> 3) << 11 | (0x82 >> 2) << 5 | 0x84 >> 3)


def test_countdown_refresh_rewrites_only_its_lines(tmp_path: Path, zbarimg: list[str]) -> None:
    fb = FakeFramebuffer(tmp_path / "a", 320, 240, 16, 704)
    display = fb.display()
    display.show_pairing(URL, "Kitchen cam", 540)
    before = fb.device.read_bytes()
    writes: list[tuple[int, int]] = []
    real_write = display._write_frame

    def recording_write(data: bytes, offset: int = 0) -> None:
        writes.append((offset, len(data)))
        real_write(data, offset)

    display._write_frame = recording_write  # type: ignore[method-assign]

    display.show_pairing(URL, "Kitchen cam", 540)  # the same minute: nothing to redraw
    assert writes == []
    display.show_pairing(URL, "Kitchen cam", 59)

    assert len(writes) == 1
    offset, length = writes[0]
    assert offset % 704 == 0
    assert 0 < length < 704 * 30
    after = fb.device.read_bytes()
    assert after[:offset] == before[:offset]
    assert after[offset + length :] == before[offset + length :]
    assert after != before
    # identical to drawing that moment from scratch
    fresh = FakeFramebuffer(tmp_path / "b", 320, 240, 16, 704)
    fresh.display().show_pairing(URL, "Kitchen cam", 59)
    assert after == fresh.device.read_bytes()
    assert decode_qr(zbarimg, fb.read_image(), tmp_path / "screen.png") == [URL]


def test_a_new_url_redraws_the_whole_screen(tmp_path: Path, zbarimg: list[str]) -> None:
    fb = FakeFramebuffer(tmp_path, 320, 240, 32, 1280)
    display = fb.display()
    display.show_pairing(URL, "Kitchen cam", 540)
    second = URL.replace(SECRET, "A" * 22)
    display.show_pairing(second, "Kitchen cam", 540)
    assert decode_qr(zbarimg, fb.read_image(), tmp_path / "screen.png") == [second]


def test_visible_area_inside_a_larger_virtual_one(tmp_path: Path, zbarimg: list[str]) -> None:
    fb = FakeFramebuffer(tmp_path, 320, 480, 32, 1280)
    (fb.attrs / "mode").write_text("U:320x240p-60\n")
    (fb.attrs / "pan").write_text("0,240\n")
    display = fb.display()
    assert (display.geometry.visible_width, display.geometry.visible_height) == (320, 240)

    display.show_pairing(URL, "Kitchen cam", 540)

    image = fb.read_image()
    assert image.crop((0, 0, 320, 240)).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert decode_qr(zbarimg, image.crop((0, 240, 320, 480)), tmp_path / "screen.png") == [URL]


@pytest.mark.parametrize(
    "name",
    [
        "Wohnzimmer-Kamera über dem Sofa, neben dem großen Fenster zum Garten",
        "\u732b\u30ab\u30e1\u30e9 \U0001f408",
    ],
)
def test_long_or_non_latin_names_still_leave_a_readable_code(
    tmp_path: Path, zbarimg: list[str], name: str
) -> None:
    fb = FakeFramebuffer(tmp_path, 320, 240, 16, 640)
    fb.display().show_pairing(URL, name, 540)
    assert decode_qr(zbarimg, fb.read_image(), tmp_path / "screen.png") == [URL]


def test_small_screens_get_modules_a_phone_can_read(tmp_path: Path, zbarimg: list[str]) -> None:
    assert render_pairing_screen(URL, "Kitchen cam", 540, (320, 240)).module >= GOOD_MODULE
    assert len(INTERNET_URL) > 250
    screen = render_pairing_screen(INTERNET_URL, "Wohnzimmer", 540, (320, 240))
    assert screen.module >= GOOD_MODULE
    assert screen.side_by_side  # the last resort before dropping the instructions
    fb = FakeFramebuffer(tmp_path, 320, 240, 16, 704)
    fb.display().show_pairing(INTERNET_URL, "Wohnzimmer", 540)
    assert decode_qr(zbarimg, fb.read_image(), tmp_path / "screen.png") == [INTERNET_URL]


def test_countdown_counts_whole_minutes_up() -> None:
    assert countdown_text(86400) == "Code expires in 1440 minutes"
    assert countdown_text(61) == "Code expires in 2 minutes"
    assert countdown_text(60) == "Code expires in 1 minute"
    assert countdown_text(0) == "Code expires in 1 minute"


def test_rendered_screen_keeps_text_inside_and_code_centred() -> None:
    for size in ((320, 240), (1280, 720), (1920, 1080)):
        screen = render_pairing_screen(URL, "Kitchen cam", 540, size)
        assert screen.image.size == size
        assert screen.image.mode == "L"
        left, top, right, bottom = screen.countdown_box
        assert 0 <= left < right <= size[0]
        assert 0 <= top < bottom <= size[1]
        dark = Image.eval(screen.image, lambda v: 255 - v).getbbox()
        assert dark is not None
        # within a pixel of the scaled bitmap font's glyph cells
        assert abs(dark[0] - (size[0] - dark[2])) <= max(2, size[0] // 200), "content is off centre"


class RecordingDisplay:
    def __init__(self) -> None:
        self.shown: list[str] = []
        self.cleared: list[str] = []

    def show_pairing(self, url: str, device_name: str, remaining_s: float) -> None:
        self.shown.append(url)

    def clear(self, reason: str) -> None:
        self.cleared.append(reason)


def test_write_error_falls_back_without_logging_the_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fb = FakeFramebuffer(tmp_path, 320, 240, 16, 640)
    fallback = RecordingDisplay()
    display = fb.display(fallback=fallback)
    fb.device.unlink()  # the screen went away after startup
    fb.device.mkdir()
    caplog.set_level(logging.DEBUG)

    display.show_pairing(URL, "Kitchen cam", 540)
    display.show_pairing(URL, "Kitchen cam", 480)
    display.clear("expired")

    assert fallback.shown == [URL, URL]
    assert fallback.cleared == ["expired"]
    assert "cannot show the pairing code" in caplog.text
    assert SECRET not in caplog.text
    assert KEY not in caplog.text


def test_write_error_without_fallback_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fb = FakeFramebuffer(tmp_path, 320, 240, 32, 1280)
    display = fb.display()
    fb.device.unlink()
    fb.device.mkdir()
    display.show_pairing(URL, "Kitchen cam", 540)
    display.clear("expired")
    assert "petcamctl pair" in caplog.text
    assert SECRET not in caplog.text


def test_clear_write_error_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fb = FakeFramebuffer(tmp_path, 320, 240, 32, 1280)
    fallback = RecordingDisplay()
    display = fb.display(fallback=fallback)
    display.show_pairing(URL, "Kitchen cam", 540)
    fb.device.unlink()
    fb.device.mkdir()
    display.clear("paired")
    assert "cannot blank the screen" in caplog.text
    assert fallback.cleared == ["paired"]


def test_geometry_from_sysfs(tmp_path: Path) -> None:
    fb = FakeFramebuffer(tmp_path, 1920, 1080, 32, 7680)
    (fb.attrs / "mode").write_text("")  # drivers without a mode list show nothing
    link = tmp_path / "fb-hdmi"
    link.symlink_to(fb.device)
    geometry = probe_framebuffer(link, fb.sysfs)
    assert geometry.name == "fb0"
    assert (geometry.width, geometry.height) == (1920, 1080)
    assert (geometry.bits_per_pixel, geometry.stride) == (32, 7680)
    assert (geometry.visible_width, geometry.visible_height) == (1920, 1080)
    assert geometry.frame_bytes == 7680 * 1080


def test_zero_stride_means_unpadded_lines(tmp_path: Path) -> None:
    fb = FakeFramebuffer(tmp_path, 320, 240, 16, 640)
    (fb.attrs / "stride").write_text("0\n")
    assert probe_framebuffer(fb.device, fb.sysfs).stride == 640


@pytest.mark.parametrize(
    ("attr", "value", "message"),
    [
        ("bits_per_pixel", "24\n", "24 bits per pixel is not supported"),
        ("bits_per_pixel", "8\n", "8 bits per pixel is not supported"),
        ("virtual_size", "1920x1080\n", "unexpected sysfs values"),
        ("virtual_size", "0,0\n", "implausible size"),
        ("virtual_size", "64,64\n", "too small"),
        ("stride", "600\n", "stride 600 is shorter"),
        ("stride", "wide\n", "unexpected sysfs values"),
    ],
)
def test_bad_sysfs_values_are_refused_up_front(tmp_path: Path, attr: str, value: str, message: str) -> None:
    fb = FakeFramebuffer(tmp_path, 320, 240, 16, 640)
    (fb.attrs / attr).write_text(value)
    with pytest.raises(DisplayUnavailableError, match=message):
        fb.display()


@pytest.mark.parametrize("attr", ["virtual_size", "bits_per_pixel", "stride"])
def test_missing_sysfs_attribute(tmp_path: Path, attr: str) -> None:
    fb = FakeFramebuffer(tmp_path, 320, 240, 16, 640)
    (fb.attrs / attr).unlink()
    with pytest.raises(DisplayUnavailableError, match=f"cannot read .*{attr}"):
        fb.display()


def test_no_framebuffer_at_all(tmp_path: Path) -> None:
    with pytest.raises(DisplayUnavailableError, match="cannot read"):
        FramebufferDisplay(tmp_path / "fb0", tmp_path / "sys")


def test_missing_device(tmp_path: Path) -> None:
    fb = FakeFramebuffer(tmp_path, 320, 240, 16, 640)
    fb.device.unlink()
    with pytest.raises(DisplayUnavailableError, match=r"cannot open .* for writing"):
        fb.display()
    assert not fb.device.exists(), "probing must not create a file where the device should be"


def test_device_that_cannot_be_written(tmp_path: Path) -> None:
    fb = FakeFramebuffer(tmp_path, 320, 240, 16, 640)
    fb.device.unlink()
    fb.device.mkdir()
    with pytest.raises(DisplayUnavailableError, match=r"cannot open .* for writing"):
        fb.display()


@pytest.mark.skipif(os.geteuid() == 0, reason="root is not stopped by file permissions")
def test_permission_denied(tmp_path: Path) -> None:
    fb = FakeFramebuffer(tmp_path, 320, 240, 16, 640)
    fb.device.chmod(0o444)
    with pytest.raises(DisplayUnavailableError, match="Permission denied"):
        fb.display()


def test_names_are_drawn_with_the_letters_the_font_has() -> None:
    from petcamd.display import framebuffer

    face = framebuffer._font(12)
    # Pillow 10.1+'s scalable face is ASCII only; bookworm's bitmap font is Latin-1
    assert face.printable("K\u00fcche Gro\u00df \u0141\u00f3d\u017a \u732b") in (
        "Kuche Gross Lodz ?",
        "K\u00fcche Gro\u00df L\u00f3dz ?",
    )
