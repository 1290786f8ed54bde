"""What every benchmark shares: settings, statistics, /proc accounting, results and the machine.

CPU is read from outside the measured process, per thread, from /proc/<pid>/task/<tid>/schedstat
(nanoseconds; /proc/<pid>/stat's clock ticks are too coarse for a few per cent of a core over a
few seconds). Threads named `CAMERA_THREAD` are the camera (capture and its encoder, which a Pi
does in hardware) and are reported apart from the cost of sending to viewers.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
CAMERA_THREAD = "bench-cam"
"""Linux thread name (comm) of camera threads; threads they start inherit it."""

Json = dict[str, Any]
T = TypeVar("T")


class BenchmarkFailedError(Exception):
    """A benchmark's own correctness check failed: its numbers would mean nothing."""


# --- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stream:
    """The stream every video benchmark sends: the daemon's defaults."""

    width: int = 1280
    height: int = 720
    fps: int = 30
    bitrate: int = 2_500_000
    keyframe_interval_s: float = 2.0

    def to_json(self) -> Json:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class Context:
    quick: bool
    log_dir: Path
    python: str = sys.executable
    stream: Stream = field(default_factory=Stream)
    seed: int = 20240501

    def pick(self, quick: T, full: T) -> T:
        return quick if self.quick else full

    def step(self, message: str) -> None:
        """A line in the run's progress log, kept with the worker logs when a benchmark fails."""
        with (self.log_dir / "progress.log").open("a") as log:
            log.write(f"{time.monotonic():.3f} {message}\n")


# --- statistics -------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), p in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# --- /proc ------------------------------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Per-thread CPU of one process at one moment, and the whole process's clock ticks."""

    pid: int
    threads: dict[int, tuple[str, int, int, int]]  # tid -> (comm, on-CPU ns, waiting ns, ticks)
    process_ticks: int
    """utime + stime of the process, which includes threads that have exited."""


def _ticks(stat_line: str) -> int:
    fields = stat_line.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def cpu_sample(pid: int) -> CpuSample:
    threads: dict[int, tuple[str, int, int, int]] = {}
    process_ticks = _ticks(Path(f"/proc/{pid}/stat").read_text())
    for entry in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (entry / "comm").read_text().strip()
            running, waiting, _slices = (entry / "schedstat").read_text().split()
            ticks = _ticks((entry / "stat").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended between listing and reading
        threads[int(entry.name)] = (comm, int(running), int(waiting), ticks)
    return CpuSample(pid, threads, process_ticks)


@dataclass(frozen=True, slots=True)
class CpuDelta:
    """CPU seconds used between two samples, split into camera threads and everything else.

    `waiting_s` is time the process's threads were ready to run but another process had the CPU:
    a direct measure of how much the machine's other load got in the way.
    """

    camera_s: float
    other_s: float
    waiting_s: float

    @property
    def total_s(self) -> float:
        return self.camera_s + self.other_s


def cpu_delta(start: CpuSample, end: CpuSample) -> CpuDelta:
    """Live threads to the nanosecond; threads that exited in between (aiortc reopens its encoder,
    and libx264's threads with it, whenever the bitrate moves) from the process's clock ticks."""
    camera = other = waiting = live_ticks = 0
    for tid, (comm, running, waited, ticks) in end.threads.items():
        _, running_before, waited_before, ticks_before = start.threads.get(tid, (comm, 0, 0, 0))
        waiting += waited - waited_before
        live_ticks += ticks - ticks_before
        if comm == CAMERA_THREAD:
            camera += running - running_before
        else:
            other += running - running_before
    exited_s = max(0, end.process_ticks - start.process_ticks - live_ticks) / CLOCK_TICKS
    return CpuDelta(camera / 1e9, other / 1e9 + exited_s, waiting / 1e9)


def rss_mb(pid: int) -> float:
    """Resident set size (VmRSS) in MiB."""
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """High-water mark of the resident set (VmHWM) in MiB."""
    return _status_kb(pid, "VmHWM") / 1024


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchmarkFailedError(f"/proc/{pid}/status has no {key}")


def name_this_thread(name: str) -> str:
    """Set the calling thread's Linux name (inherited by threads it starts); returns the old one."""
    comm = Path(f"/proc/self/task/{threading.get_native_id()}/comm")
    old = comm.read_text().strip()
    comm.write_text(name[:15])
    return old


def pin_loopback_ice() -> None:
    """Make aioice offer only 127.0.0.1 as a host candidate: the benchmarks stay on loopback.

    `aioice.ice.get_host_addresses(use_ipv4, use_ipv6)` is looked up at call time by
    `Connection.gather_candidates` from aioice 0.8 (Debian bookworm) to 0.13.
    """
    import aioice.ice

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:  # noqa: ARG001 - aioice's signature
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback_only


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A goal the project sets itself: `metric` `op` `value` (op is ">=" or "<=")."""

    metric: str
    op: str
    value: float
    unit: str = ""

    def met(self, metrics: Json) -> bool | None:
        actual = metrics.get(self.metric)
        if not isinstance(actual, int | float):
            return None
        return actual >= self.value if self.op == ">=" else actual <= self.value


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the printed table."""

    label: str
    value: str
    target: Target | None = None


@dataclass(slots=True)
class Result:
    name: str
    metrics: Json = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    target: Target | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    duration_s: float = 0.0

    @property
    def met(self) -> bool | None:
        if self.error is not None or self.target is None:
            return None
        return self.target.met(self.metrics)

    def to_json(self) -> Json:
        out: Json = dict(self.metrics)
        target = self.target
        out["target_metric"] = target.metric if target else None
        out["target_op"] = target.op if target else None
        out["target"] = target.value if target else None
        out["met"] = self.met
        out["ok"] = self.error is None
        out["error"] = self.error
        out["notes"] = list(self.notes)
        out["duration_s"] = round(self.duration_s, 1)
        return out


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.2f} ms"


def fmt_cores(cpu_s_per_s: float | None) -> str:
    return "-" if cpu_s_per_s is None else f"{cpu_s_per_s * 100:.1f} % of a core"


def render_table(results: Iterable[Result]) -> str:
    """A Markdown table, so the same text goes to the terminal and into docs/performance.md."""
    lines = ["| benchmark | measure | result | target | |", "| --- | --- | --- | --- | --- |"]
    for result in results:
        if result.error is not None:
            lines.append(f"| {result.name} | **FAILED** | {result.error.splitlines()[0][:100]} | | ✗ |")
            continue
        for row in result.rows:
            target = row.target
            mark = ""
            goal = ""
            if target is not None:
                unit = f" {target.unit}" if target.unit else ""
                goal = f"{target.op} {target.value:g}{unit}"
                met = target.met(result.metrics)
                mark = "met" if met else "**missed**" if met is False else "?"
            lines.append(f"| {result.name} | {row.label} | {row.value} | {goal} | {mark} |")
    return "\n".join(lines)


# --- the machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    """x86: "model name"; a Raspberry Pi also says which board ("Model") and SoC ("Hardware")."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in ("model name", "Model", "Hardware"):
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    parts = [fields[k] for k in ("Model", "model name", "Hardware") if k in fields]
    return ", ".join(parts) or platform.processor() or "unknown"


def _version(module: str) -> str | None:
    try:
        imported = __import__(module)
    except ImportError:
        return None
    return str(getattr(imported, "__version__", "unknown"))


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> Json:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_mb": mem_kb // 1024,
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "aiortc": _version("aiortc"),
        "aioice": _version("aioice"),
        "av": _version("av"),
        "aiohttp": _version("aiohttp"),
        "cryptography": _version("cryptography"),
        "load_average_start": load_average(),
    }


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
