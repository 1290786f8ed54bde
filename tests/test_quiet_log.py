"""QuietLog: repeated lines of one kind become one line per interval that says how many were held."""

from __future__ import annotations

import logging

import pytest

from petcamd.quiet_log import QuietLog


def test_one_line_per_kind_per_interval_then_the_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    now = [100.0]
    quiet = QuietLog(logging.getLogger("quiet-test"), interval_s=10.0, clock=lambda: now[0])
    for n in range(50):
        quiet.info("flood", f"refused 127.0.0.{n}")
    quiet.warning("other", "a different kind is not held back")
    now[0] += 10.5
    quiet.info("flood", "refused 127.0.0.99")
    now[0] += 1.0
    quiet.info("flood", "held again")
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [
        (logging.INFO, "refused 127.0.0.0"),
        (logging.WARNING, "a different kind is not held back"),
        (logging.INFO, "refused 127.0.0.99 (49 more like it in the last 10 s)"),
    ]
