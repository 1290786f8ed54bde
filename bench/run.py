"""`python -m bench.run [--quick] [--json FILE] [--only NAME...] [--strict]`.

Runs the benchmarks one after another (never two at once: they would measure each other), prints
a Markdown table and writes JSON with stable keys. Exit status: 0 when every benchmark ran and
passed its own correctness checks, 1 when one failed them, 2 with --strict when a target was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import fanout, join_time, latency, memory, relay, relay_throughput, send_cost, setup_time
from bench.harness import (
    ROOT,
    Context,
    Json,
    Result,
    load_average,
    machine_info,
    now_iso,
    render_table,
)

SCHEMA_VERSION = 1
RESULTS = ROOT / "bench" / "results"
DEFAULT_JSON = RESULTS / "latest.json"
DEFAULT_QUICK_JSON = RESULTS / "latest-quick.json"

Benchmark = Callable[[Context], Awaitable[Result]]
BENCHMARKS: dict[str, Benchmark] = {
    send_cost.NAME: send_cost.run,
    fanout.NAME: fanout.run,
    setup_time.NAME: setup_time.run,
    join_time.NAME: join_time.run,
    latency.NAME: latency.run,
    memory.NAME: memory.run,
    relay.NAME: relay.run,
    relay_throughput.NAME: relay_throughput.run,
}
BUDGET_S = {"quick": 60.0, "full": 300.0}
"""Longest any one benchmark may run before it counts as failed."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shorter windows (< 1 min)")
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help=f"results file (default: {DEFAULT_JSON}; {DEFAULT_QUICK_JSON.name} with --quick)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=sorted(BENCHMARKS), metavar="NAME", help="run these only"
    )
    parser.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    return parser


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _run_one(ctx: Context, name: str) -> Result:
    started = time.monotonic()
    budget = BUDGET_S["quick" if ctx.quick else "full"]
    try:
        result = await asyncio.wait_for(BENCHMARKS[name](ctx), budget)
    except TimeoutError:
        result = Result(name, error=f"did not finish within {budget:g} s")
    except Exception as exc:
        result = Result(name, error=f"{type(exc).__name__}: {exc}")
    result.duration_s = time.monotonic() - started
    return result


def document(ctx: Context, results: list[Result], machine: Json, started: str) -> Json:
    missed = [r.name for r in results if r.met is False]
    return {
        "schema": SCHEMA_VERSION,
        "started": started,
        "quick": ctx.quick,
        "stream": ctx.stream.to_json(),
        "machine": machine,
        "results": {r.name: r.to_json() for r in results},
        "summary": {
            "targets_met": [r.name for r in results if r.met is True],
            "targets_missed": missed,
            "failed": [r.name for r in results if r.error is not None],
        },
    }


async def run_all(ctx: Context, names: list[str]) -> list[Result]:
    results: list[Result] = []
    for name in names:
        log(f"bench: {name} ...")
        ctx.step(f"{name}: start")
        result = await _run_one(ctx, name)
        log(f"bench: {name} {'FAILED' if result.error else 'ok'} in {result.duration_s:.1f} s")
        if result.error:
            log(f"  {result.error}")
        results.append(result)
    return results


def _raise_file_limit() -> None:
    """The relay benchmark holds over 2,000 sockets across its processes, which inherit this."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main() -> None:
    args = _parser().parse_args()
    _raise_file_limit()
    ctx = Context(quick=args.quick, log_dir=Path(tempfile.mkdtemp(prefix="petcamd-bench-")))
    started = now_iso()
    machine = machine_info()
    total = time.monotonic()
    results = asyncio.run(run_all(ctx, args.only or list(BENCHMARKS)))
    machine["load_average_end"] = load_average()
    machine["duration_s"] = round(time.monotonic() - total, 1)
    print(render_table(results))
    for result in results:
        for note in result.notes:
            print(f"- {result.name}: {note}")
    doc = document(ctx, results, machine, started)
    path: Path = args.json or (DEFAULT_QUICK_JSON if args.quick else DEFAULT_JSON)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    log(f"bench: wrote {path} ({machine['duration_s']} s in all)")
    if doc["summary"]["failed"]:
        log(f"bench: worker logs kept in {ctx.log_dir}")
        sys.exit(1)
    shutil.rmtree(ctx.log_dir, ignore_errors=True)
    sys.exit(2 if args.strict and doc["summary"]["targets_missed"] else 0)


if __name__ == "__main__":
    main()
