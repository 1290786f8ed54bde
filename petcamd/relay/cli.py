"""`petcam-relay [--config FILE] [--check-config]`: load the config, run the relay until a signal.

SIGTERM and SIGINT stop it (open connections are told 1001 going away); SIGHUP reloads the TLS
certificate and key. Under systemd it sends READY=1 once listening and keeps STATUS= current.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from petcamd import __version__
from petcamd.notify import Health, SystemdNotifier, notify_loop
from petcamd.relay.config import SYSTEM_CONFIG_PATH, ConfigError, RelayConfig, load_config, read_turn_secret
from petcamd.relay.server import RelayServer
from petcamd.relay.tls import TlsError, server_ssl_context

log = logging.getLogger(__name__)

EXIT_CONFIG = 2
EXIT_START = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petcam-relay",
        description="Internet relay for petcamd: forwards end-to-end encrypted signaling, stores nothing.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"configuration file (default: {SYSTEM_CONFIG_PATH})",
    )
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--version", action="version", version=f"petcam-relay {__version__}")
    return parser


def _setup_logging(level: str) -> None:
    """Under systemd, journald adds time and priority itself; elsewhere show the time."""
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(name)s: %(message)s" if under_journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)
    logging.getLogger("aiohttp.access").disabled = True


def _load(path: Path | None) -> RelayConfig | list[str]:
    try:
        config = load_config(path)
    except ConfigError as exc:
        return exc.problems
    tls = config.tls
    if tls.certificate is not None and tls.private_key is not None:
        try:
            server_ssl_context(tls.certificate, tls.private_key)
        except TlsError as exc:
            return [f"{path or SYSTEM_CONFIG_PATH}: {exc}"]
    if any(url.startswith("turn") for url in config.turn.urls):
        try:
            read_turn_secret(config.turn)
        except (OSError, ValueError) as exc:
            return [f"[turn] secret_file: {exc}"]
    return config


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    loaded = _load(args.config)
    if isinstance(loaded, list):
        print(f"petcam-relay: configuration has {len(loaded)} problem(s):", file=sys.stderr)
        for problem in loaded:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"petcam-relay: configuration OK ({args.config or SYSTEM_CONFIG_PATH})")
        return 0
    _setup_logging(loaded.logging.level)
    return asyncio.run(run_relay(loaded))


async def run_relay(config: RelayConfig, notifier: SystemdNotifier | None = None) -> int:
    notifier = notifier if notifier is not None else SystemdNotifier()
    server = RelayServer(config)
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)  # noqa: TRY400 - the reason is the whole story
        return EXIT_START
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, server)
    notifier.ready(server.status())
    status = asyncio.create_task(notify_loop(notifier, lambda: Health(ok=True), server.status), name="notify")
    try:
        await stop.wait()
    finally:
        notifier.stopping()
        status.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await status
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await server.stop()
    return 0


def _reload(server: RelayServer) -> None:
    try:
        server.reload_tls()
    except TlsError as exc:
        log.error("keeping the old TLS certificate: %s", exc)  # noqa: TRY400 - no traceback to show


if __name__ == "__main__":
    sys.exit(main())
