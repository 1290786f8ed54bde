"""Choosing the pairing display: the framebuffer, a terminal, or nothing.

The pairing URL holds a one-time secret, so text output goes only to a real terminal in "auto"
mode: under systemd stdout is the journal, and a secret there outlives the pairing window.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Literal, TextIO

from petcamd.display.console import ConsoleDisplay
from petcamd.display.framebuffer import (
    DEFAULT_DEVICE,
    DEFAULT_SYSFS_ROOT,
    DisplayUnavailableError,
    FramebufferDisplay,
    PairingDisplay,
)

log = logging.getLogger(__name__)

DisplayKind = Literal["auto", "framebuffer", "console", "none"]
DEFAULT_TTY = Path("/dev/tty1")  # the console on the attached screen when there is no framebuffer

__all__ = [
    "DEFAULT_TTY",
    "DisplayKind",
    "DisplayUnavailableError",
    "ScreenTerminalDisplay",
    "create_display",
]


class ScreenTerminalDisplay:
    """The console display on a screen's own terminal (tty1), wiped before and after.

    Wiping keeps the code from scrolling up among login prompts, and takes it (and the URL) off the
    screen and out of the scrollback when pairing ends.
    """

    WIPE = "\x1b[H\x1b[2J\x1b[3J"

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._console = ConsoleDisplay(stream, wipe=self.WIPE)

    def show_pairing(self, url: str, device_name: str, remaining_s: float) -> None:
        try:
            self._console.show_pairing(url, device_name, remaining_s)
        except OSError as exc:
            log.warning("cannot show the pairing code on the terminal: %s", exc)

    def clear(self, reason: str) -> None:
        try:
            self._console.clear(reason)
        except OSError as exc:
            log.warning("cannot clear the terminal: %s", exc)

    def close(self) -> None:
        self._stream.close()


def create_display(
    kind: DisplayKind,
    *,
    device: Path = DEFAULT_DEVICE,
    sysfs_root: Path = DEFAULT_SYSFS_ROOT,
    console_stream: TextIO | None = None,
    tty: Path | None = DEFAULT_TTY,
) -> PairingDisplay | None:
    """The display for `pairing.display`; None when there is none (pairing works without one).

    "framebuffer" raises DisplayUnavailableError when the screen is unusable: it was asked for by
    name. A framebuffer that fails later falls back to a terminal, under the same rule as "auto".
    """
    if kind == "none":
        log.info("pairing display disabled by configuration")
        return None
    stream = console_stream if console_stream is not None else sys.stdout
    if kind == "console":
        if not _is_terminal(stream):
            log.warning("pairing display 'console' writes pairing codes to an output that is not a terminal")
        return ConsoleDisplay(stream)
    if kind == "framebuffer":
        display = FramebufferDisplay(device, sysfs_root)
        display.fallback = _terminal_display(stream, tty)
        log.info("pairing codes shown on framebuffer %s", display.geometry.name)
        return display
    if kind == "auto":
        try:
            display = FramebufferDisplay(device, sysfs_root)
        except DisplayUnavailableError as exc:
            terminal = _terminal_display(stream, tty)
            if terminal is None:
                log.warning(
                    "no pairing display: %s, and no terminal is attached; `petcamctl pair` shows the code",
                    exc,
                )
            else:
                log.info("pairing codes shown on the terminal: %s", exc)
            return terminal
        display.fallback = _terminal_display(stream, tty)
        log.info("pairing codes shown on framebuffer %s", display.geometry.name)
        return display
    raise ValueError(f"unknown pairing display {kind!r}")


def _terminal_display(stream: TextIO, tty: Path | None) -> PairingDisplay | None:
    """stdout when it is a terminal (someone ran the daemon by hand), else the screen's tty if writable."""
    if _is_terminal(stream):
        return ConsoleDisplay(stream)
    if tty is None:
        return None
    try:
        fd = os.open(tty, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        log.debug("no terminal at %s: %s", tty, exc)
        return None
    if not os.isatty(fd):  # a plain file is a log in disguise: never write the secret there
        os.close(fd)
        log.debug("%s is not a terminal", tty)
        return None
    return ScreenTerminalDisplay(os.fdopen(fd, "w", encoding="utf-8", errors="replace"))


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):  # closed or detached
        return False
