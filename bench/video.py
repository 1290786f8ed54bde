"""Moves shared by the video benchmarks: connect viewers, measure a streaming window."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.harness import BenchmarkFailedError, Context, CpuDelta, Json, cpu_delta, cpu_sample
from bench.rpc import Worker


@dataclass(frozen=True, slots=True)
class Joined:
    """One viewer's setup, in monotonic seconds (the receiver's clock, shared by all processes)."""

    viewer_id: str
    offer_started: float
    connected: float
    first_frame: float

    @property
    def setup_s(self) -> float:
        """Offer created -> first decoded frame."""
        return self.first_frame - self.offer_started

    @property
    def join_s(self) -> float:
        """ICE and DTLS connected -> first decoded frame."""
        return self.first_frame - self.connected


async def connect(
    ctx: Context, sender: Worker, receiver: Worker, n: int, variant: str, ice: str = "lan"
) -> list[Joined]:
    """Offer from `n` new viewers, answer from the sender, wait until each decoded a frame."""
    offered = await receiver.call("offer", n=n)
    answered = await sender.call("answer", offers=offered["offers"], variant=variant, ice=ice)
    await receiver.call("accept", ids=offered["ids"], answers=answered["answers"])
    firsts: Json = await receiver.call("wait_first", ids=offered["ids"], within=12.0)
    joined: list[Joined] = []
    want = [ctx.stream.width, ctx.stream.height]
    for viewer_id in offered["ids"]:
        info = firsts[viewer_id]
        if info["sizes"] != [want]:
            raise BenchmarkFailedError(
                f"viewer {viewer_id} decoded frames of size {info['sizes']}, not {want}"
            )
        if info["connected"] is None:
            raise BenchmarkFailedError(f"viewer {viewer_id} decoded a frame but never reported connected")
        joined.append(Joined(viewer_id, info["offer_started"], info["connected"], info["first_frame"]))
    return joined


async def disconnect(sender: Worker, receiver: Worker) -> None:
    await receiver.call("close")
    await sender.call("close")


@dataclass(frozen=True, slots=True)
class Window:
    seconds: float
    cpu: CpuDelta
    fps: dict[str, float]  # viewer id -> decoded frames per second in the window
    stream_kbps: float  # what the camera's encoder produced (0 for raw frames)
    receiver_cpu: CpuDelta | None

    @property
    def receiver_cpu_s_per_s(self) -> float | None:
        """Whether the viewers' process, not the sender, was what limited the frame rate."""
        return None if self.receiver_cpu is None else self.receiver_cpu.total_s / self.seconds

    @property
    def waiting_s_per_s(self) -> float:
        """Time the sender was ready to run but the CPU was busy with something else."""
        return self.cpu.waiting_s / self.seconds

    @property
    def send_cpu_s_per_s(self) -> float:
        """CPU of everything but the camera threads, per second of wall time."""
        return self.cpu.other_s / self.seconds

    @property
    def camera_cpu_s_per_s(self) -> float:
        return self.cpu.camera_s / self.seconds


async def measure(sender: Worker, receiver: Worker | None, seconds: float) -> Window:
    """Sender CPU (from /proc, outside the process) and viewers' decoded fps over one window."""
    before = await sender.call("counters")
    t0 = time.monotonic()
    start = cpu_sample(sender.pid)
    receiver_start = cpu_sample(receiver.pid) if receiver is not None else None
    await asyncio.sleep(seconds)
    end = cpu_sample(sender.pid)
    receiver_cpu = (
        cpu_delta(receiver_start, cpu_sample(receiver.pid)) if receiver and receiver_start else None
    )
    t1 = time.monotonic()
    after = await sender.call("counters")
    kbps = (after["bytes_total"] - before["bytes_total"]) * 8 / 1000 / (t1 - t0)
    fps: dict[str, float] = {}
    if receiver is not None:
        # Frames decoded in the window; the decoder may trail by a frame or two, which is noise here.
        counts: Json = await receiver.call("frames", t0=t0, t1=t1)
        fps = {viewer_id: info["frames"] / (t1 - t0) for viewer_id, info in counts.items()}
    return Window(t1 - t0, cpu_delta(start, end), fps, kbps, receiver_cpu)
