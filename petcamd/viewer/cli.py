"""`petcam-view`: pair with a petcamd camera and watch it from a terminal, trusting no server.

Exit codes: 0 success, 1 other failure, 2 usage, 3 camera offline or unreachable, 4 pairing code
refused (expired, used, locked or wrong), 5 not paired (or revoked), 6 camera busy (too many
viewers or attempts), 7 no video arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from petcamd.viewer.client import (
    DeviceBusyError,
    DeviceOfflineError,
    NotPairedError,
    NoVideoError,
    PairingRefusedError,
    ViewerError,
    WatchResult,
    pair,
    watch,
)
from petcamd.viewer.recorder import RecordingError
from petcamd.viewer.state import StateError, UnknownDeviceError, ViewerState

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OFFLINE, EXIT_PAIRING, EXIT_NOT_PAIRED, EXIT_BUSY, EXIT_NO_VIDEO = (
    range(8)
)

_EXIT_CODES: list[tuple[type[Exception], int]] = [
    (DeviceOfflineError, EXIT_OFFLINE),
    (PairingRefusedError, EXIT_PAIRING),
    (NotPairedError, EXIT_NOT_PAIRED),
    (DeviceBusyError, EXIT_BUSY),
    (NoVideoError, EXIT_NO_VIDEO),
    (UnknownDeviceError, EXIT_USAGE),
]

_PATHS = {"host": "direct on the LAN (host)", "srflx": "through NAT (srflx)", "relay": "through TURN (relay)"}


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def _default_name() -> str:
    return f"petcam-view on {socket.gethostname()}"[:64].strip() or "petcam-view"


async def cmd_pair(state: ViewerState, args: argparse.Namespace) -> int:
    started = time.monotonic()
    device = await pair(state, args.url, args.name or _default_name(), via=args.via)
    elapsed = time.monotonic() - started
    if args.json:
        _print_json(
            {
                "device_id": device.device_id,
                "name": device.name,
                "peer_id": device.peer_id,
                "pair_s": round(elapsed, 4),
            }
        )
    else:
        print(f"Paired with {device.name!r} ({device.device_id}) in {elapsed:.2f} s.")
        print(f"The camera knows this viewer as {device.peer_id}. Watch with: petcam-view watch")
    return EXIT_OK


async def cmd_list(state: ViewerState, args: argparse.Namespace) -> int:
    devices = await asyncio.to_thread(state.devices)
    if args.json:
        _print_json([{k: v for k, v in d.to_json().items() if k != "device_key"} for d in devices])
    elif not devices:
        print("No camera is paired. Pair one with: petcam-view pair URL")
    else:
        print(f"{'ID':<18}{'NAME':<26}{'PAIRED':<18}ADDRESSES")
        for d in devices:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(d.paired_at)) if d.paired_at else "?"
            print(f"{d.device_id:<18}{d.name:<26}{when:<18}{', '.join(d.addresses)}:{d.port}")
    return EXIT_OK


async def cmd_watch(state: ViewerState, args: argparse.Namespace) -> int:
    device = await asyncio.to_thread(state.find, args.device)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)  # Ctrl-C ends the watch with a summary
    if not args.json:
        until = f"{args.frames} frames" if args.frames else "Ctrl-C"
        if args.duration:
            until = f"{until} or {args.duration:g} s" if args.frames else f"{args.duration:g} s"
        print(f"Watching {device.name!r} until {until}...", flush=True)
    try:
        result = await watch(
            state,
            device,
            frames=args.frames,
            duration_s=args.duration,
            record=args.record,
            stop=stop,
            via=args.via,
        )
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    _report(result, as_json=args.json)
    return EXIT_OK


def _report(result: WatchResult, *, as_json: bool) -> None:
    if as_json:
        _print_json(result.to_json())
        return
    first = "never" if result.first_frame_s is None else f"after {result.first_frame_s:.2f} s"
    size = f" at {result.width}x{result.height}" if result.width else ""
    print(
        f"{result.frames_decoded} frames decoded{size}, {result.fps:.1f} fps; first frame {first}; "
        f"media path {_PATHS.get(result.path or '', result.path or 'unknown')}; "
        f"signaling {'through the relay' if result.signaling == 'relay' else 'on the LAN'}."
    )
    if result.record_path:
        print(f"Recorded {result.recorded_packets} frames to {result.record_path}.")
    if result.ended_by_device:
        print("The camera ended the session.")


Command = Callable[[ViewerState, argparse.Namespace], Coroutine[Any, Any, int]]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    route = argparse.ArgumentParser(add_help=False)
    route.add_argument(
        "--via",
        choices=("auto", "lan", "relay"),
        default="auto",
        help="reach the camera on the LAN, through its relay, or whichever answers first (default)",
    )
    parser = argparse.ArgumentParser(
        prog="petcam-view", description="Pair with a petcamd camera and watch it.", parents=[common]
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keys and paired cameras (default ~/.local/share/petcam-view)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pair_cmd = commands.add_parser(
        "pair", parents=[common, route], help="pair using the URL of the camera's QR code"
    )
    pair_cmd.add_argument("url", help="the pairing URL (quote it: it contains '&')")
    pair_cmd.add_argument("--name", help="how the camera's owner will see this viewer")
    pair_cmd.set_defaults(run=cmd_pair)
    commands.add_parser("list", parents=[common], help="list paired cameras").set_defaults(run=cmd_list)
    watch_cmd = commands.add_parser("watch", parents=[common, route], help="watch live video")
    watch_cmd.add_argument("device", nargs="?", help="device id, id prefix or name (default: the only one)")
    watch_cmd.add_argument("--frames", type=_positive_int, metavar="N", help="stop after N decoded frames")
    watch_cmd.add_argument("--duration", type=_positive_float, metavar="S", help="stop after S seconds")
    watch_cmd.add_argument(
        "--record", type=Path, metavar="FILE", help="save the video as MP4 (no re-encoding)"
    )
    watch_cmd.set_defaults(run=cmd_watch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not hasattr(args, "json"):
        args.json = False
    state = ViewerState(args.state_dir)
    command: Command = args.run
    try:
        return asyncio.run(command(state, args))
    except (ViewerError, StateError, RecordingError) as exc:
        code = next((c for kind, c in _EXIT_CODES if isinstance(exc, kind)), EXIT_FAILED)
        print(f"petcam-view: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
