"""1. Send cost per viewer: petcamd's passthrough vs aiortc encoding raw frames itself.

Two sender processes (one per path) and one receiver process, alive together. Each round measures
both paths in turn: a window with no viewer (the idle overhead, for reference), then a window
streaming to one viewer. A viewer's cost is the CPU of the sender's threads other than the camera's
during that window, idle overhead included (conservative for the passthrough, whose idle overhead
is a large part of its small cost). Capture and the camera's encoder (libx264 here, the hardware
encoder on a Pi) are reported apart. The ratio is taken per round, from windows measured back to
back, and the median of the rounds is reported.
"""

from __future__ import annotations

import asyncio

from bench.harness import (
    BenchmarkFailedError,
    Context,
    Json,
    Result,
    Row,
    Target,
    fmt_cores,
    median,
    rounded,
)
from bench.rpc import Worker, workers
from bench.video import connect, disconnect, measure

NAME = "send_cost"
TARGET = Target("ratio", ">=", 15, "x")
PATHS = (("passthrough", "petcamd"), ("reencode", "reencode"))


async def run(ctx: Context) -> Result:
    rounds = ctx.pick(1, 3)
    window = ctx.pick(1.5, 5.0)
    idle_window = ctx.pick(1.0, 2.0)
    settle = ctx.pick(0.5, 1.5)
    nominal = ctx.stream.fps
    per_round: list[Json] = []
    async with workers(
        Worker.start(ctx, "sender"), Worker.start(ctx, "sender"), Worker.start(ctx, "receiver")
    ) as (passthrough, reencode, receiver):
        senders = {"passthrough": passthrough, "reencode": reencode}
        await asyncio.gather(
            passthrough.call("start", mode="passthrough", stream=ctx.stream.to_json()),
            reencode.call("start", mode="raw", stream=ctx.stream.to_json()),
        )
        await asyncio.sleep(settle)
        for _ in range(rounds):
            measured: Json = {}
            for path, variant in PATHS:
                sender = senders[path]
                idle = await measure(sender, None, idle_window)
                await connect(ctx, sender, receiver, 1, variant)
                await asyncio.sleep(settle)
                busy = await measure(sender, receiver, window)
                await disconnect(sender, receiver)
                (fps,) = busy.fps.values()
                if fps < 0.5 * nominal and path == "passthrough":
                    raise BenchmarkFailedError(f"passthrough viewer decoded only {fps:.1f} fps")
                if fps <= 0:
                    raise BenchmarkFailedError(f"{path} viewer decoded nothing in the window")
                # Per frame the viewer got, scaled to the nominal rate: an encoder that cannot keep
                # up would otherwise look cheaper for sending fewer frames.
                measured[path] = {
                    "cpu": busy.send_cpu_s_per_s * min(1.0, nominal / fps),
                    "idle": idle.send_cpu_s_per_s,
                    "camera": busy.camera_cpu_s_per_s,
                    "fps": fps,
                    "kbps": busy.stream_kbps,
                    "waiting": busy.waiting_s_per_s,
                }
                await asyncio.sleep(ctx.pick(0.2, 0.5))
            measured["ratio"] = measured["reencode"]["cpu"] / max(measured["passthrough"]["cpu"], 1e-6)
            per_round.append(measured)

    def med(path: str, key: str) -> float:
        return median([r[path][key] for r in per_round])

    pass_cost = med("passthrough", "cpu")
    re_cost = med("reencode", "cpu")
    ratio = median([r["ratio"] for r in per_round])
    metrics: Json = {
        "passthrough_cpu_s_per_s": rounded(pass_cost),
        "reencode_cpu_s_per_s": rounded(re_cost),
        "ratio": rounded(ratio, 1),
        "passthrough_fps": rounded(med("passthrough", "fps"), 1),
        "reencode_fps": rounded(med("reencode", "fps"), 1),
        "stream_kbps": rounded(med("passthrough", "kbps"), 0),
        "passthrough_idle_cpu_s_per_s": rounded(med("passthrough", "idle")),
        "reencode_idle_cpu_s_per_s": rounded(med("reencode", "idle")),
        "camera_encode_cpu_s_per_s": rounded(med("passthrough", "camera")),
        "camera_raw_cpu_s_per_s": rounded(med("reencode", "camera")),
        "passthrough_waiting_for_cpu_s_per_s": rounded(med("passthrough", "waiting")),
        "reencode_waiting_for_cpu_s_per_s": rounded(med("reencode", "waiting")),
        "rounds": rounds,
        "window_s": window,
        "per_round": [
            {
                "passthrough_cpu_s_per_s": rounded(r["passthrough"]["cpu"]),
                "reencode_cpu_s_per_s": rounded(r["reencode"]["cpu"]),
                "ratio": rounded(r["ratio"], 1),
            }
            for r in per_round
        ],
    }
    result = Result(NAME, metrics, target=TARGET)
    result.rows = [
        Row("passthrough, one viewer", fmt_cores(pass_cost)),
        Row("aiortc re-encoding, one viewer", fmt_cores(re_cost)),
        Row("re-encode / passthrough", f"{ratio:.1f}x", TARGET),
        Row("camera encoder (shared; hardware on a Pi)", fmt_cores(med("passthrough", "camera"))),
    ]
    if med("passthrough", "kbps") < 0.6 * ctx.stream.bitrate / 1000:
        raise BenchmarkFailedError(
            f"the camera produced {med('passthrough', 'kbps'):.0f} kbit/s, far below the configured "
            f"{ctx.stream.bitrate // 1000}: the textured pattern no longer fills the bitrate"
        )
    if med("reencode", "fps") < 0.9 * nominal:
        result.notes.append(
            f"aiortc's encoder delivered {med('reencode', 'fps'):.1f} fps, not {nominal}: its cost is "
            "scaled to the nominal rate per delivered frame"
        )
    return result
