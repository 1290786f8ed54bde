"""A free TCP port on loopback, for servers that tests and benchmarks start as processes."""

from __future__ import annotations

import socket


def free_port() -> int:
    """Free now; another process could take it before the server binds, which on a test machine
    does not happen in practice (servers started in-process bind port 0 instead)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
