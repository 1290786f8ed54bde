"""`petcamd`: parse arguments, load config, run the supervisor. Wiring only."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from petcamd import __version__
from petcamd.config import SYSTEM_CONFIG_PATH, Config, ConfigError, load_config

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petcamd", description="Private Raspberry Pi pet camera daemon.")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"configuration file (default: {SYSTEM_CONFIG_PATH} if present)",
    )
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--version", action="version", version=f"petcamd {__version__}")
    return parser


def setup_logging(level: str) -> None:
    """Under systemd, journald adds time and priority itself; elsewhere show the time."""
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(name)s: %(message)s" if under_journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config: Config = load_config(args.config)
    except ConfigError as exc:
        print(f"petcamd: configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"petcamd: configuration OK ({args.config or SYSTEM_CONFIG_PATH})")
        return 0
    setup_logging(config.logging.level)
    from petcamd.supervisor import run_daemon  # keeps --check-config free of heavy imports

    return asyncio.run(run_daemon(config))


if __name__ == "__main__":
    sys.exit(main())
