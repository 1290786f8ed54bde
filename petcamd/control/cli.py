"""`petcamctl`: the owner's command line, a D-Bus client of petcamd.

Exit codes: 0 success, 1 the daemon refused (message says why) or `nettest` found an error, 2 usage,
3 petcamd is not running, 4 access denied (not root and not in the petcamd group).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from dbus_fast import BusType, DBusError
from dbus_fast.aio import MessageBus

from petcamd.control.dbus_service import BUS_NAME, INTERFACE, OBJECT_PATH
from petcamd.display.qr import make_qr, render_png, render_terminal

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_DENIED = 0, 1, 2, 3, 4


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _explain(exc: DBusError) -> CliError:
    if exc.type in ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"):
        return CliError("petcamd is not running (start it with: systemctl start petcamd)", EXIT_NOT_RUNNING)
    if exc.type == "org.freedesktop.DBus.Error.AccessDenied":
        return CliError("access denied: run as root or as a member of the petcamd group", EXIT_DENIED)
    return CliError(str(exc.text), EXIT_REFUSED)


async def _connect(bus: str) -> tuple[MessageBus, Any]:
    try:
        bus_type = BusType.SYSTEM if bus == "system" else BusType.SESSION
        connection = await MessageBus(bus_type=bus_type).connect()
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot connect to the {bus} bus: {exc}", EXIT_NOT_RUNNING) from None
    try:
        introspection = await connection.introspect(BUS_NAME, OBJECT_PATH)
    except DBusError as exc:
        connection.disconnect()
        raise _explain(exc) from None
    proxy = connection.get_proxy_object(BUS_NAME, OBJECT_PATH, introspection).get_interface(INTERFACE)
    return connection, proxy


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else "never"


async def cmd_status(iface: Any, args: argparse.Namespace) -> int:
    status = json.loads(await iface.call_get_status())
    if args.json:
        _print_json(status)
        return EXIT_OK
    pairing = f"open, {status['pairing_expires_in_s']:.0f} s left" if status["pairing_active"] else "closed"
    lines = [
        f"petcamd {status['version']}: {status['state']}",
        f"  device:   {status['name']} ({status['device_id']})",
        f"  mode:     {'Local Network Mode' if status['mode'] == 'local' else 'internet'}",
        f"  camera:   {status['camera']} ({status['camera_source']})",
        f"  viewers:  {status['viewers']} watching, {status['paired_peers']} paired",
        f"  pairing:  {pairing}",
        f"  LAN port: {status['lan_port']}",
    ]
    relay = status.get("relay")
    if relay:
        error = f" ({relay['last_error']})" if relay["last_error"] else ""
        lines.append(f"  relay:    {relay['state']} at {relay['url']}{error}")
    lines += [f"  problem:  {problem}" for problem in status["problems"]]
    print("\n".join(lines))
    return EXIT_OK


_MODE_NAMES = {"local": "Local Network Mode", "internet": "internet mode"}


async def cmd_mode(iface: Any, args: argparse.Namespace) -> int:
    if args.mode is None:
        mode = await iface.call_get_mode()
        _print_json({"mode": mode}) if args.json else print(_MODE_NAMES.get(mode, mode))
        return EXIT_OK
    changed = await iface.call_set_mode(args.mode)
    if args.json:
        _print_json({"mode": args.mode, "changed": changed})
    elif not changed:
        print(f"Already in {_MODE_NAMES[args.mode]}.")
    elif args.mode == "local":
        print("Switched to Local Network Mode: the relay connection is closed; nothing leaves your network.")
    else:
        print("Switched to internet mode: connecting to the relay (see `petcamctl status`).")
    return EXIT_OK


async def cmd_pair(iface: Any, args: argparse.Namespace) -> int:
    closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_closed(reason: str) -> None:
        if not closed.done():
            closed.set_result(reason)

    iface.on_pairing_closed(on_closed)
    url, expires_at = await iface.call_start_pairing()
    matrix = make_qr(url)
    if args.png:
        render_png(matrix, args.png)
    if args.json:
        _print_json({"url": url, "expires_at": expires_at, "qr_version": matrix.version})
    else:
        print(render_terminal(matrix))
        print(f"\nScan the code with your phone's camera, or open:\n  {url}")
        print(f"The code works once, until {_when(expires_at)}.")
        if args.png:
            print(f"QR code saved to {args.png}")
    if args.no_wait:
        return EXIT_OK
    if not args.json:
        print("Waiting for a viewer to pair (Ctrl-C stops waiting; the code stays valid)...")
    reason = await closed
    if args.json:
        _print_json({"result": reason})
    else:
        print({"paired": "Paired.", "expired": "The pairing code expired."}.get(reason, f"Pairing {reason}."))
    return EXIT_OK if reason == "paired" else EXIT_REFUSED


async def cmd_peers(iface: Any, args: argparse.Namespace) -> int:
    peers = json.loads(await iface.call_list_peers())
    if args.json:
        _print_json(peers)
    elif not peers:
        print("No viewer is paired. Run `petcamctl pair` to pair one.")
    else:
        print(f"{'ID':<18}{'NAME':<26}{'PAIRED':<18}LAST SEEN")
        for peer in peers:
            print(
                f"{peer['peer_id']:<18}{peer['name']:<26}{_when(peer['paired_at']):<18}{_when(peer['last_seen'])}"
            )
    return EXIT_OK


async def cmd_rename(iface: Any, args: argparse.Namespace) -> int:
    peer = json.loads(await iface.call_rename_peer(args.peer_id, args.name.encode("utf-8")))
    _print_json(peer) if args.json else print(f"Renamed {peer['peer_id']} to {peer['name']!r}.")
    return EXIT_OK


async def cmd_revoke(iface: Any, args: argparse.Namespace) -> int:
    peer = json.loads(await iface.call_revoke_peer(args.peer_id))
    if args.json:
        _print_json(peer)
    else:
        print(
            f"Revoked {peer['name']!r} ({peer['peer_id']}): it can no longer watch; its sessions were closed."
        )
    return EXIT_OK


async def cmd_nettest(iface: Any, args: argparse.Namespace) -> int:
    if not args.json:
        print("Testing the relay and the STUN/TURN servers (a few seconds)...", flush=True)
    report, text = await iface.call_run_network_test()
    document = json.loads(report)
    _print_json(document) if args.json else print(text)
    return EXIT_REFUSED if document["status"] == "error" else EXIT_OK


Command = Callable[[Any, argparse.Namespace], Coroutine[Any, Any, int]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petcamctl", description="Control the petcamd pet camera daemon.")
    parser.add_argument(
        "--bus", choices=("system", "session"), default="system", help="D-Bus bus (default system)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="daemon, camera, viewers and pairing state")
    status.set_defaults(run=cmd_status)
    pair = commands.add_parser("pair", help="open a pairing window and show its QR code")
    pair.add_argument("--no-wait", action="store_true", help="return without waiting for the result")
    pair.add_argument("--png", type=Path, metavar="FILE", help="also save the QR code as a PNG image")
    pair.set_defaults(run=cmd_pair)
    commands.add_parser("peers", help="list paired viewers").set_defaults(run=cmd_peers)
    rename = commands.add_parser("rename", help="rename a paired viewer")
    rename.add_argument("peer_id")
    rename.add_argument("name")
    rename.set_defaults(run=cmd_rename)
    revoke = commands.add_parser("revoke", help="unpair a viewer and end its live sessions")
    revoke.add_argument("peer_id")
    revoke.set_defaults(run=cmd_revoke)
    mode = commands.add_parser(
        "mode", help="show or switch the network mode (kept across restarts)", description=_MODE_HELP
    )
    mode.add_argument("mode", nargs="?", choices=("local", "internet"))
    mode.set_defaults(run=cmd_mode)
    commands.add_parser(
        "nettest", help="test the relay, STUN and TURN servers; say what outside viewers can expect"
    ).set_defaults(run=cmd_nettest)
    return parser


_MODE_HELP = (
    "local: Local Network Mode, viewers on the same network only, nothing leaves it. "
    "internet: also reachable through the relay in the config file (network.relay_url). "
    "Without an argument, prints the current mode."
)


async def _run(args: argparse.Namespace) -> int:
    connection, iface = await _connect(args.bus)
    try:
        command: Command = args.run
        return await command(iface, args)
    except DBusError as exc:
        raise _explain(exc) from None
    finally:
        connection.disconnect()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except CliError as exc:
        print(f"petcamctl: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_REFUSED


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
