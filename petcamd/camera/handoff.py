"""Moving frames from capture/encoder threads onto the event loop thread."""

from __future__ import annotations

import asyncio
import logging

from petcamd.camera.source import EncodedFrame, FailureSink, FrameSink

log = logging.getLogger(__name__)


def hand_over(loop: asyncio.AbstractEventLoop, sink: FrameSink, frame: EncodedFrame) -> bool:
    """Queue `frame` for `sink` on the loop's thread; False once the loop has closed under us."""
    try:
        loop.call_soon_threadsafe(sink, frame)
    except RuntimeError:
        log.debug("event loop closed; frame from a capture thread dropped")
        return False
    return True


def report_failure(loop: asyncio.AbstractEventLoop, on_failure: FailureSink | None, reason: str) -> None:
    """Tell the source's owner, on the loop's thread, that capture died on its own."""
    if on_failure is None:
        return
    try:
        loop.call_soon_threadsafe(on_failure, reason)
    except RuntimeError:
        log.debug("event loop closed; capture failure not reported: %s", reason)
