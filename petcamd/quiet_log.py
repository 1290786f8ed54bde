"""Log lines that an attacker can repeat at will, at most one per kind every ten seconds.

A flood of refused connections must not become a flood of journal writes on an SD card: the
first refusal of a kind is logged at once, later ones within the interval are only counted, and
the next line says how many there were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class QuietLog:
    def __init__(
        self, logger: logging.Logger, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._kinds: dict[str, tuple[float, int]] = {}  # kind -> (last logged at, held back since)

    def info(self, kind: str, text: str) -> None:
        self._log(logging.INFO, kind, text)

    def warning(self, kind: str, text: str) -> None:
        self._log(logging.WARNING, kind, text)

    def _log(self, level: int, kind: str, text: str) -> None:
        now = self._clock()
        last = self._kinds.get(kind)
        if last is not None and now - last[0] < self._interval_s:
            self._kinds[kind] = (last[0], last[1] + 1)
            return
        if last is not None and last[1]:
            text += f" ({last[1]} more like it in the last {now - last[0]:.0f} s)"
        self._kinds[kind] = (now, 0)
        self._logger.log(level, "%s", text)
