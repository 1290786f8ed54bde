"""Counters for /metrics, rendered in the Prometheus text exposition format (version 0.0.4).

Only counts, by fixed labels: no device ids, addresses or anything a client chose.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Metrics:
    connections: Counter[str] = field(default_factory=Counter)
    """Open WebSocket connections by role (a gauge)."""
    sessions: int = 0
    messages: Counter[str] = field(default_factory=Counter)
    """Frames forwarded, by direction."""
    bytes: Counter[str] = field(default_factory=Counter)
    """Frame bytes forwarded, by direction."""
    drops: Counter[str] = field(default_factory=Counter)
    """Messages received and not forwarded, by reason."""
    closes: Counter[str] = field(default_factory=Counter)
    """Connections the relay closed, by reason."""
    refused: Counter[str] = field(default_factory=Counter)
    """Connections refused before the WebSocket upgrade, by reason."""
    registrations: Counter[str] = field(default_factory=Counter)
    """Device registration attempts, by result."""
    devices: Callable[[], int] = lambda: 0
    backplane_up: Callable[[], bool | None] = lambda: None
    """Whether the Redis backplane works; None (no metric) for a relay routing alone."""

    def render(self) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, label: str, values: Mapping[str, int]) -> None:
            lines.append(f"# HELP petcam_relay_{name} {help_text}")
            lines.append(f"# TYPE petcam_relay_{name} {kind}")
            lines.extend(f'petcam_relay_{name}{{{label}="{key}"}} {values[key]}' for key in sorted(values))

        def single(name: str, kind: str, help_text: str, value: int) -> None:
            lines.append(f"# HELP petcam_relay_{name} {help_text}")
            lines.append(f"# TYPE petcam_relay_{name} {kind}")
            lines.append(f"petcam_relay_{name} {value}")

        connections = {role: self.connections[role] for role in ("device", "viewer")}
        family("connections", "gauge", "Open WebSocket connections by role.", "role", connections)
        single("devices_registered", "gauge", "Devices registered on this instance.", self.devices())
        single("sessions", "gauge", "Open viewer-device sessions.", self.sessions)
        backplane = self.backplane_up()
        if backplane is not None:
            single("backplane_up", "gauge", "1 while the Redis backplane works, else 0.", int(backplane))
        family("messages_forwarded_total", "counter", "Frames forwarded.", "direction", self.messages)
        family("bytes_forwarded_total", "counter", "Frame bytes forwarded.", "direction", self.bytes)
        family(
            "dropped_messages_total", "counter", "Messages not forwarded, by reason.", "reason", self.drops
        )
        family("closed_connections_total", "counter", "Connections the relay closed.", "reason", self.closes)
        family(
            "refused_connections_total",
            "counter",
            "Connections refused before upgrade.",
            "reason",
            self.refused,
        )
        family(
            "registrations_total", "counter", "Device registration attempts.", "result", self.registrations
        )
        return "\n".join(lines) + "\n"
