"""petcamd's benchmarks: `python -m bench.run [--quick] [--only NAME...]`; see docs/performance.md."""
