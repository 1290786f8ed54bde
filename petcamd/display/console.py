"""The pairing code on a text terminal: the fallback display, and the one `make run` uses."""

from __future__ import annotations

import sys
from typing import TextIO

from petcamd.display.qr import make_qr, render_terminal


class ConsoleDisplay:
    """Writes the QR code and URL to a terminal stream (never to the log: the URL holds a secret)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout

    def show_pairing(self, url: str, device_name: str, remaining_s: float) -> None:
        minutes = max(1, round(remaining_s / 60))
        text = (
            f"\n{render_terminal(make_qr(url))}\n\n"
            f"Pair with {device_name!s}: scan the code with your phone's camera, or open\n"
            f"  {url}\n"
            f"This code works once and expires in {minutes} minute{'s' if minutes != 1 else ''}.\n"
        )
        self._stream.write(text)
        self._stream.flush()

    def clear(self, reason: str) -> None:
        self._stream.write(f"Pairing window closed: {reason}.\n")
        self._stream.flush()
