"""`python -m bench.run` runs end to end and writes the JSON the docs describe (numbers not judged).

Performance is measured by the benchmarks themselves (`make bench`), never by timed unit tests:
this only proves the harness works on the installed dependency set.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(60)
def test_quick_latency_benchmark_writes_stable_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "latency", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1
    assert doc["quick"] is True
    assert {"cpu_model", "cpus", "python", "aiortc", "av", "load_average_start"} <= doc["machine"].keys()
    result = doc["results"]["latency"]
    assert result["ok"] is True
    assert result["error"] is None
    assert {"p50_ms", "p99_ms", "target", "target_metric", "target_op", "met"} <= result.keys()
    assert result["target_metric"] == "p99_ms"
    assert isinstance(result["met"], bool)
    assert result["frames"] > 0
    assert "| latency |" in proc.stdout
