"""Which pairing display the daemon gets, and that the secret never lands on a non-terminal."""

from __future__ import annotations

import io
import logging
import os
import select
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypedDict

import pytest

from petcamd.display.console import ConsoleDisplay
from petcamd.display.framebuffer import DisplayUnavailableError, FramebufferDisplay
from petcamd.display.select import ScreenTerminalDisplay, create_display
from tests.test_framebuffer import SECRET, URL, FakeFramebuffer


@dataclass
class Pty:
    master: int
    stream: TextIO  # the terminal side, as a process's stdout would be
    path: Path

    def output(self) -> str:
        chunks: list[bytes] = []
        while select.select([self.master], [], [], 0.2)[0]:
            chunks.append(os.read(self.master, 65536))
        return b"".join(chunks).decode()


@pytest.fixture
def pty() -> Iterator[Pty]:
    master, slave = os.openpty()
    path = Path(os.ttyname(slave))
    stream = os.fdopen(slave, "w", encoding="utf-8")
    try:
        yield Pty(master, stream, path)
    finally:
        stream.close()
        os.close(master)


@pytest.fixture
def framebuffer(tmp_path: Path) -> FakeFramebuffer:
    return FakeFramebuffer(tmp_path, 320, 240, 16, 640)


class Location(TypedDict):
    device: Path
    sysfs_root: Path


def missing(tmp_path: Path) -> Location:
    return {"device": tmp_path / "nofb" / "fb0", "sysfs_root": tmp_path / "nofb" / "sys"}


def test_none_means_no_display(framebuffer: FakeFramebuffer) -> None:
    assert create_display("none", device=framebuffer.device, sysfs_root=framebuffer.sysfs) is None


def test_auto_prefers_the_framebuffer(framebuffer: FakeFramebuffer, pty: Pty) -> None:
    display = create_display(
        "auto", device=framebuffer.device, sysfs_root=framebuffer.sysfs, console_stream=pty.stream, tty=None
    )
    assert isinstance(display, FramebufferDisplay)
    display.show_pairing(URL, "Kitchen cam", 300)
    assert pty.output() == ""


def test_explicit_framebuffer(framebuffer: FakeFramebuffer) -> None:
    display = create_display(
        "framebuffer", device=framebuffer.device, sysfs_root=framebuffer.sysfs, console_stream=io.StringIO()
    )
    assert isinstance(display, FramebufferDisplay)


def test_explicit_framebuffer_that_is_unusable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DisplayUnavailableError, match="cannot read"):
        create_display("framebuffer", **missing(tmp_path), console_stream=io.StringIO(), tty=None)


def test_explicit_framebuffer_with_unsupported_depth(framebuffer: FakeFramebuffer) -> None:
    (framebuffer.attrs / "bits_per_pixel").write_text("24\n")
    with pytest.raises(DisplayUnavailableError, match="24 bits per pixel"):
        create_display("framebuffer", device=framebuffer.device, sysfs_root=framebuffer.sysfs, tty=None)


def test_auto_falls_back_to_stdout_when_it_is_a_terminal(tmp_path: Path, pty: Pty) -> None:
    display = create_display("auto", **missing(tmp_path), console_stream=pty.stream, tty=None)
    assert isinstance(display, ConsoleDisplay)
    display.show_pairing(URL, "Kitchen cam", 300)
    assert URL in pty.output()


def test_auto_uses_the_screen_terminal_and_wipes_it(tmp_path: Path, pty: Pty) -> None:
    journal = io.StringIO()
    display = create_display("auto", **missing(tmp_path), console_stream=journal, tty=pty.path)
    assert isinstance(display, ScreenTerminalDisplay)
    try:
        display.show_pairing(URL, "Kitchen cam", 300)
        shown = pty.output()
        assert shown.startswith(ScreenTerminalDisplay.WIPE)
        assert URL in shown
        display.clear("paired")
        cleared = pty.output()
        assert cleared.startswith(ScreenTerminalDisplay.WIPE)
        assert URL not in cleared
    finally:
        display.close()
    assert journal.getvalue() == ""


def test_auto_never_writes_the_secret_to_a_non_terminal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    journal = io.StringIO()
    not_a_tty = tmp_path / "tty1"
    not_a_tty.write_text("")
    display = create_display("auto", **missing(tmp_path), console_stream=journal, tty=not_a_tty)
    assert display is None
    assert "no pairing display" in caplog.text
    assert "petcamctl pair" in caplog.text
    assert journal.getvalue() == ""
    assert not_a_tty.read_text() == ""


def test_auto_with_the_default_stdout_under_a_service_manager(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # pytest's captured stdout is no terminal, like the journal under systemd
    assert create_display("auto", **missing(tmp_path), tty=tmp_path / "no-tty") is None
    assert capsys.readouterr().out == ""


def test_auto_framebuffer_failing_later_keeps_the_secret_off_non_terminals(
    framebuffer: FakeFramebuffer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    journal = io.StringIO()
    display = create_display(
        "auto", device=framebuffer.device, sysfs_root=framebuffer.sysfs, console_stream=journal, tty=None
    )
    assert isinstance(display, FramebufferDisplay)
    framebuffer.device.unlink()
    framebuffer.device.mkdir()
    display.show_pairing(URL, "Kitchen cam", 300)
    display.clear("expired")
    assert journal.getvalue() == ""
    assert SECRET not in caplog.text


def test_framebuffer_failing_later_falls_back_to_a_terminal(framebuffer: FakeFramebuffer, pty: Pty) -> None:
    display = create_display(
        "auto", device=framebuffer.device, sysfs_root=framebuffer.sysfs, console_stream=pty.stream, tty=None
    )
    assert isinstance(display, FramebufferDisplay)
    framebuffer.device.unlink()
    display.show_pairing(URL, "Kitchen cam", 300)
    assert URL in pty.output()


def test_explicit_console_is_obeyed_with_a_warning_off_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    display = create_display("console", console_stream=stream)
    assert isinstance(display, ConsoleDisplay)
    assert "not a terminal" in caplog.text
    display.show_pairing(URL, "Kitchen cam", 300)
    assert URL in stream.getvalue()
    assert SECRET not in caplog.text


def test_explicit_console_on_a_terminal(pty: Pty, caplog: pytest.LogCaptureFixture) -> None:
    display = create_display("console", console_stream=pty.stream)
    assert isinstance(display, ConsoleDisplay)
    assert "not a terminal" not in caplog.text


def test_closed_stream_is_not_a_terminal(tmp_path: Path) -> None:
    stream = io.StringIO()
    stream.close()
    assert create_display("auto", **missing(tmp_path), console_stream=stream, tty=None) is None


def test_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown pairing display"):
        create_display("hdmi", **missing(tmp_path))  # type: ignore[arg-type]
