"""The pairing code on a text terminal: the fallback display, and the one `make run` uses."""

from __future__ import annotations

import hashlib
import math
import sys
from typing import TextIO

from petcamd.display.qr import make_qr, render_terminal


class ConsoleDisplay:
    """Writes the QR code and URL to a terminal stream (never to the log: the URL holds a secret)."""

    def __init__(self, stream: TextIO | None = None, *, wipe: str = "") -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._wipe = wipe  # written before each whole code (a screen's own terminal clears itself)
        self._shown: bytes | None = None  # digest of the code on screen; the URL itself is not kept

    def show_pairing(self, url: str, device_name: str, remaining_s: float) -> None:
        """The whole code the first time; for the same code again, one line with the time left."""
        minutes = max(1, math.ceil(remaining_s / 60))
        shown = hashlib.sha256(f"{url}\0{device_name}".encode()).digest()
        if shown == self._shown:
            self._stream.write(
                f"The pairing code expires in {minutes} minute{'s' if minutes != 1 else ''}.\n"
            )
            self._stream.flush()
            return
        self._shown = shown
        text = self._wipe + (
            f"\n{render_terminal(make_qr(url))}\n\n"
            f"Pair with {device_name!s}: scan the code with your phone's camera, or open\n"
            f"  {url}\n"
            f"This code works once and expires in {minutes} minute{'s' if minutes != 1 else ''}.\n"
        )
        self._stream.write(text)
        self._stream.flush()

    def clear(self, reason: str) -> None:
        self._shown = None
        self._stream.write(f"{self._wipe}Pairing window closed: {reason}.\n")
        self._stream.flush()
