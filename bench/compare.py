"""`python -m bench.compare A.json B.json ...`: headline numbers of several runs side by side.

For comparing a change with the committed bench/results/latest.json, or one dependency set with
another. Each run is a column; a value missing from a run (older schema, benchmark not run) is "-".
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import Json


def _pct(value: Any) -> str:
    return f"{value * 100:.1f} %" if isinstance(value, int | float) else "-"


def _ms(value: Any) -> str:
    return f"{value * 1000:.0f} ms" if isinstance(value, int | float) else "-"


def _ms_raw(value: Any) -> str:
    return f"{value:.2f} ms" if isinstance(value, int | float) else "-"


def _x(value: Any) -> str:
    return f"{value:.1f}x" if isinstance(value, int | float) else "-"


def _mb(value: Any) -> str:
    return f"{value:.0f} MB" if isinstance(value, int | float) else "-"


def _count(value: Any) -> str:
    return f"{value:,.0f}" if isinstance(value, int | float) else "-"


def _kib(value: Any) -> str:
    return f"{value:.1f} KiB" if isinstance(value, int | float) else "-"


HEADLINES: list[tuple[str, str, str, Callable[[Any], str]]] = [
    ("send_cost", "passthrough_cpu_s_per_s", "passthrough CPU, one viewer (of a core)", _pct),
    ("send_cost", "reencode_cpu_s_per_s", "aiortc re-encoding CPU, one viewer", _pct),
    ("send_cost", "ratio", "re-encode / passthrough (target >= 15x)", _x),
    ("fanout", "ratio_8_to_1", "send CPU 8 viewers / 1 viewer (target <= 8.5x)", _x),
    ("fanout", "per_viewer_marginal_cpu_s_per_s", "send CPU per added viewer", _pct),
    ("setup", "lan_median_s", "LAN setup, median (target <= 300 ms)", _ms),
    ("setup", "lan_p95_s", "LAN setup, p95", _ms),
    ("setup", "stun_unreachable_median_s", "unreachable STUN setup, median", _ms),
    ("setup", "stock_stun_unreachable_median_s", "same, stock aiortc", _ms),
    ("join", "petcamd_median_s", "mid-stream join, median (target <= 150 ms)", _ms),
    ("join", "stock_median_s", "same, stock aiortc", _ms),
    ("latency", "p50_ms", "added latency p50", _ms_raw),
    ("latency", "p99_ms", "added latency p99 (target <= 5 ms)", _ms_raw),
    ("latency", "p99_ms_4_viewers", "added latency p99, 4 viewers", _ms_raw),
    ("memory", "rss_idle_mb", "daemon RSS idle", _mb),
    ("memory", "rss_1_viewer_mb", "daemon RSS 1 viewer", _mb),
    ("memory", "rss_4_viewers_mb", "daemon RSS 4 viewers (target <= 150 MB)", _mb),
    ("relay", "msg_per_relay_cpu_s", "relay msg/s per core (per CPU-second)", _count),
    ("relay", "msg_per_s", "relay msg/s reached", _count),
    ("relay", "p99_ms", "relay forwarding p99 at the fixed rate", _ms_raw),
    ("relay", "kb_per_idle_device", "relay memory per idle device", _kib),
]


def column_name(doc: Json, path: Path) -> str:
    machine = doc.get("machine", {})
    return f"{path.name}: aiortc {machine.get('aiortc', '?')}, av {machine.get('av', '?')}"


def render(docs: list[tuple[Path, Json]]) -> str:
    lines = [
        "| measure | " + " | ".join(column_name(doc, path) for path, doc in docs) + " |",
        "| --- |" + " --- |" * len(docs),
    ]
    for benchmark, key, label, fmt in HEADLINES:
        cells = [fmt(doc.get("results", {}).get(benchmark, {}).get(key)) for _, doc in docs]
        if any(cell != "-" for cell in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="JSON files written by bench.run")
    args = parser.parse_args()
    print(render([(path, json.loads(path.read_text())) for path in args.runs]))


if __name__ == "__main__":
    main()
