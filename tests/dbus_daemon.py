"""Real, private dbus-daemons for tests: no test touches the machine's own buses."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

SESSION_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

# The default policy of Debian's /usr/share/dbus-1/system.conf, reduced to what matters here, and
# one service policy file included after it, as the system bus includes system.d/.
SYSTEM_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <include ignore_missing="no">{include}</include>
</busconfig>
"""


@contextlib.contextmanager
def _bus(config: Path) -> Iterator[str]:
    """Runs dbus-daemon with `config` and yields its address."""
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        if not address:
            raise RuntimeError("dbus-daemon did not start")
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def private_bus(directory: Path) -> Iterator[str]:
    """A session-type bus on a socket in `directory`."""
    config = directory / "bus.conf"
    config.write_text(SESSION_CONFIG.format(socket=directory / "bus.sock"))
    with _bus(config) as address:
        yield address


@contextlib.contextmanager
def system_bus(directory: Path, include: Path) -> Iterator[str]:
    """A system-type bus (Debian's default policy plus the service policy `include`)."""
    config = directory / "system-bus.conf"
    config.write_text(SYSTEM_CONFIG.format(socket=directory / "system_bus_socket", include=include))
    with _bus(config) as address:
        yield address
