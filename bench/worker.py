"""`python -m bench.worker ROLE`: a benchmark process driven over stdin/stdout (see bench.rpc)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from bench.harness import pin_loopback_ice
from bench.rpc import Role, serve


def _role(name: str) -> Role:
    if name == "sender":
        from bench.sender import SenderRole

        return SenderRole()
    if name == "receiver":
        from bench.receiver import ReceiverRole

        return ReceiverRole()
    if name == "relay-load":
        from bench.relay_load import RelayLoadRole

        return RelayLoadRole()
    raise SystemExit(f"unknown role {name!r}")


async def _main(name: str) -> None:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by accident must not corrupt the replies
    await serve(_role(name), out)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    pin_loopback_ice()
    asyncio.run(_main(sys.argv[1]))


if __name__ == "__main__":
    main()
