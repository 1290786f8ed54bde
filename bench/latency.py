"""5. Added latency: a frame entering the hub -> its last RTP packet handed to the socket.

The sender notes when each frame reaches the hub (the source's sink) and, by wrapping aiortc's
private `RTCDtlsTransport._send_rtp`, when the packet with the marker bit of each RTP timestamp
has been SRTP-protected and passed to `sendto`. Frames are matched to RTP timestamps through the
passthrough track's own pts rule. Only frames that entered the hub inside a steady-state window
count; every one of them must be matched for every viewer, or the benchmark fails.
"""

from __future__ import annotations

import asyncio
import time

from bench.harness import (
    BenchmarkFailedError,
    Context,
    Json,
    Result,
    Row,
    Target,
    fmt_ms,
    percentile,
    rounded,
)
from bench.rpc import Worker, workers
from bench.video import connect, disconnect

NAME = "latency"
TARGET = Target("p99_ms", "<=", 5.0, "ms")
MATCH_MIN = 0.98


async def _batch(ctx: Context, sender: Worker, receiver: Worker, viewers: int, window: float) -> list[float]:
    for _ in range(viewers):
        # One at a time: each viewer's RTP stream is told apart by when it started.
        await connect(ctx, sender, receiver, 1, "petcamd")
        await asyncio.sleep(0.6)
    await asyncio.sleep(ctx.pick(0.5, 1.0))
    t0 = time.monotonic_ns()
    await asyncio.sleep(window)
    t1 = time.monotonic_ns()
    await asyncio.sleep(0.3)  # the window's last frames leave
    report: Json = await sender.call("latency", t0_ns=t0, t1_ns=t1)
    await disconnect(sender, receiver)
    samples: list[float] = []
    if len(report["viewers"]) != viewers:
        raise BenchmarkFailedError(f"latency report covers {len(report['viewers'])} viewers, not {viewers}")
    for viewer in report["viewers"]:
        wanted = viewer["frames_in_window"]
        if viewer["matched"] < MATCH_MIN * wanted:
            raise BenchmarkFailedError(
                f"{viewer['name']}: only {viewer['matched']} of {wanted} frames were seen leaving as RTP"
            )
        samples += viewer["samples_ms"]
    return samples


async def run(ctx: Context) -> Result:
    window = ctx.pick(2.0, 8.0)
    batches = ctx.pick((1,), (1, 4))
    metrics: Json = {"window_s": window}
    for viewers in (1, 4):  # the same keys in every run; None for a batch not run (--quick)
        suffix = "" if viewers == 1 else f"_{viewers}_viewers"
        metrics |= {f"{key}{suffix}": None for key in ("p50_ms", "p99_ms", "max_ms", "frames")}
    async with workers(Worker.start(ctx, "sender"), Worker.start(ctx, "receiver")) as (sender, receiver):
        await sender.call("start", mode="passthrough", stream=ctx.stream.to_json(), latency_tap=True)
        await asyncio.sleep(ctx.pick(0.5, 1.0))
        for viewers in batches:
            samples = await _batch(ctx, sender, receiver, viewers, window)
            suffix = "" if viewers == 1 else f"_{viewers}_viewers"
            metrics[f"p50_ms{suffix}"] = rounded(percentile(samples, 50), 3)
            metrics[f"p99_ms{suffix}"] = rounded(percentile(samples, 99), 3)
            metrics[f"max_ms{suffix}"] = rounded(max(samples), 3)
            metrics[f"frames{suffix}"] = len(samples)
    result = Result(NAME, metrics, target=TARGET)
    result.rows = [
        Row(
            "1 viewer, p50 / p99",
            f"{fmt_ms(metrics['p50_ms'] / 1000)} / {fmt_ms(metrics['p99_ms'] / 1000)}",
            TARGET,
        )
    ]
    if metrics["p99_ms_4_viewers"] is not None:
        result.rows.append(
            Row(
                "4 viewers (all streams), p50 / p99",
                f"{fmt_ms(metrics['p50_ms_4_viewers'] / 1000)} / "
                f"{fmt_ms(metrics['p99_ms_4_viewers'] / 1000)}",
            )
        )
    return result
