"""The contract between cameras and everything downstream of them.

A source hands the hub one H.264 access unit at a time, exactly as the encoder produced it:
nothing downstream decodes or re-encodes, so these bytes are what every viewer receives.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One Annex-B H.264 access unit.

    `timestamp_us` comes from the camera's own clock (monotonic microseconds), never wall time:
    a Pi has no RTC and its wall clock may jump when NTP syncs.
    """

    data: bytes
    timestamp_us: int
    keyframe: bool


FrameSink = Callable[[EncodedFrame], None]
"""Called on the event loop thread for every frame; sources on other threads must hop over first."""

FailureSink = Callable[[str], None]
"""Called on the event loop thread, with a reason for the owner, when capture ended on its own
(a USB camera unplugged mid-stream): health restarts at once instead of waiting for a stall."""


class EncoderKind(enum.Enum):
    HARDWARE = "hardware"
    SOFTWARE = "software"
    PASSTHROUGH = "passthrough"  # the camera itself emits H.264


class SourceError(Exception):
    """A source cannot start or has failed; the message is meant for the owner."""


class CameraMissingError(SourceError):
    """No camera is attached (or the configured one is absent)."""


class Source(Protocol):
    """A camera plus its encoder. One instance is started and stopped many times."""

    @property
    def description(self) -> str:
        """Human-readable, e.g. "picamera2 imx708 (hardware H.264)"."""

    @property
    def encoder_kind(self) -> EncoderKind: ...

    async def start(self, sink: FrameSink, on_failure: FailureSink | None = None) -> None:
        """Begin capture; frames go to `sink`. Raises SourceError (or CameraMissingError).

        Sources that can tell that capture died (not all can: picamera2 has no error callback)
        call `on_failure` once, after which this start delivers no more frames.
        """

    async def stop(self) -> None:
        """Stop capture and release the device. Idempotent."""

    def request_keyframe(self) -> None:
        """Make the next frame an IDR (with SPS/PPS in front) as soon as the encoder allows."""

    def present(self) -> bool | None:
        """Is the camera attached? A cheap check that never blocks, polled while it is missing so
        that a replugged camera streams again within a second; None when the source cannot tell
        (it is then re-probed by starting it now and then)."""


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """What the encoder is asked for; the [stream] config section maps onto this one-to-one."""

    width: int = field(default=1280, metadata={"range": (16, 4096)})
    height: int = field(default=720, metadata={"range": (16, 4096)})
    fps: int = field(default=30, metadata={"range": (1, 120)})
    bitrate: int = field(default=2_500_000, metadata={"range": (50_000, 50_000_000)})
    keyframe_interval_s: float = field(default=2.0, metadata={"range": (0.1, 60.0)})


class SubscriptionClosedError(Exception):
    """The subscription was closed (by its owner or because the hub stopped)."""


class FrameSubscription(Protocol):
    """One viewer's view of the hub: a bounded queue that skips to the next keyframe when it overflows."""

    async def get(self) -> EncodedFrame:
        """Next frame; raises SubscriptionClosedError once closed."""

    def request_keyframe(self) -> None:
        """Ask for an IDR (e.g. on a viewer's PLI); coalesced and rate-limited by the hub."""

    def close(self) -> None:
        """Leave the hub. Idempotent."""


class FrameFeed(Protocol):
    """What the WebRTC layer needs from the hub, and nothing more."""

    def subscribe(self, name: str) -> FrameSubscription: ...
