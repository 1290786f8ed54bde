#!/usr/bin/python3
"""petcam-firstboot: apply the owner's settings from petcam-setup.txt on the boot partition.

The SD-card image runs this early at every boot (petcam-firstboot.service: after the local file
systems, before the network, SSH and petcamd). On the first boot it also grows the root file
system to fill the card, makes the SSH host keys and gives the camera a unique host name. Whenever
the boot partition's file holds settings, they are applied with the system's own files and tools
and then wiped from the file, so a Wi-Fi passphrase never stays on the card's FAT partition.
Editing the file again on another computer and booting is how an owner changes them later.

It logs to the journal (stdout) and never logs a secret. A bad value is reported and skipped; the
other settings still apply, and the boot goes on: a camera that boots can be fixed, one that does
not cannot. docs/image.md documents every key.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SETUP_FILE = "petcam-setup.txt"
KEYS = (
    "wifi_ssid",
    "wifi_passphrase",
    "wifi_country",
    "hostname",
    "timezone",
    "network_mode",
    "relay_url",
    "ssh",
    "ssh_authorized_key",
)
SECRET_KEYS = frozenset({"wifi_passphrase"})
REPEATABLE_KEYS = frozenset({"ssh_authorized_key"})
WLAN = "wlan0"  # the image boots with net.ifnames=0: the Pi's one Wi-Fi interface is wlan0
HOSTNAME_PREFIX = "petcam-"
MIN_GROWTH_BYTES = 16 * 1024 * 1024
FINDMNT, SFDISK, PARTX, RESIZE2FS = (
    "/usr/bin/findmnt",
    "/usr/sbin/sfdisk",
    "/usr/bin/partx",
    "/usr/sbin/resize2fs",
)
SSH_KEYGEN, SYSTEMCTL, PETCAMD = "/usr/bin/ssh-keygen", "/usr/bin/systemctl", "/usr/bin/petcamd"

_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_TIMEZONE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")
_COUNTRY = re.compile(r"[A-Z]{2}")
_HEX_PSK = re.compile(r"[0-9a-fA-F]{64}")
_SSH_KEY = re.compile(r"(ssh-(ed25519|rsa)|ecdsa-sha2-nistp\d+|sk-\S+@openssh\.com) [A-Za-z0-9+/=]+( .*)?")
_TRUE = frozenset({"on", "yes", "true", "1", "enable", "enabled"})
_FALSE = frozenset({"off", "no", "false", "0", "disable", "disabled"})

TEMPLATE = """\
# petcamd camera settings, read at every boot. Fill in the values you need after the "=" sign,
# save, put the card in the camera and start it. The camera applies what is set here, then empties
# this file again (so the Wi-Fi passphrase does not stay on the card). docs/image.md explains each key.

# Wi-Fi network name and passphrase (WPA2; 8 to 63 characters, or the 64-digit hex key).
wifi_ssid =
wifi_passphrase =
# Two-letter country code where the camera is, e.g. GB, DE, US (sets the legal Wi-Fi channels).
wifi_country =

# Name on the network; empty gives petcam-XXXX (four random hex digits) on the first boot.
hostname =
# Time zone, e.g. Europe/London; the default is UTC.
timezone =

# "local" (nothing leaves your network) or "internet" (watch from anywhere through relay_url).
network_mode =
# The relay for internet mode, e.g. wss://relay.example.org/
relay_url =

# SSH server: "on" or "off" (the default). There are no passwords: logging in needs your public key
# here, one line per key, e.g. ssh_authorized_key = ssh-ed25519 AAAA... you@laptop
ssh =
ssh_authorized_key =
"""


class SetupError(ValueError):
    """One setting is unusable; it is skipped and the others still apply."""


@dataclass
class Settings:
    values: dict[str, str] = field(default_factory=dict)
    authorized_keys: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.values or self.authorized_keys)


def parse_setup(text: str) -> Settings:
    """`key = value` lines; the value runs to the end of the line (a passphrase may hold `#`).

    Tolerates what editors on other systems add: a UTF-8 byte-order mark, CRLF line ends, and
    double quotes around a value (the way to keep leading or trailing spaces). Empty values are
    unset. Unknown keys are reported with the nearest known one.
    """
    settings = Settings()
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep:
            settings.problems.append(f"line {number}: no '=' (expected key = value)")
            continue
        if key not in KEYS:
            near = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            settings.problems.append(f"line {number}: unknown key {key!r}{hint}")
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if not value:
            continue
        if key in REPEATABLE_KEYS:
            settings.authorized_keys.append(value)
        elif key in settings.values:
            settings.problems.append(f"line {number}: {key} is set twice; the later value wins")
            settings.values[key] = value
        else:
            settings.values[key] = value
    return settings


def parse_switch(value: str) -> bool:
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise SetupError(f"ssh must be on or off, not {value!r}")


def check_hostname(value: str) -> str:
    name = value.strip().lower()
    if not _HOSTNAME.fullmatch(name):
        raise SetupError("must be 1 to 63 letters, digits and '-', not starting or ending in '-'")
    return name


def check_timezone(value: str, zoneinfo: Path) -> str:
    zone = value.strip()
    if not _TIMEZONE.fullmatch(zone) or ".." in zone or not (zoneinfo / zone).is_file():
        raise SetupError(f"{zone!r} is not a known time zone (like Europe/London)")
    return zone


def check_country(value: str) -> str:
    country = value.strip().upper()
    if not _COUNTRY.fullmatch(country):
        raise SetupError(f"wifi_country must be a two-letter country code like GB, not {value!r}")
    return country


def wpa_psk(ssid: bytes, passphrase: str) -> str:
    """The 256-bit WPA key (IEEE 802.11i PBKDF2-SHA1, as wpa_passphrase computes it), in hex.

    Storing this instead of the passphrase keeps the passphrase itself off the card entirely.
    """
    if _HEX_PSK.fullmatch(passphrase):
        return passphrase.lower()
    if not 8 <= len(passphrase) <= 63 or not all(" " <= c <= "~" for c in passphrase):
        raise SetupError("wifi_passphrase must be 8 to 63 printable ASCII characters (or 64 hex digits)")
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode("ascii"), ssid, 4096, 32).hex()


def wpa_ssid(ssid: bytes) -> str:
    """wpa_supplicant's quoted form when it is unambiguous, hex otherwise (quotes, non-ASCII)."""
    text = ssid.decode("ascii", "replace")
    if all(" " <= c <= "~" for c in text) and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return ssid.hex()


def wpa_supplicant_conf(ssid_text: str, passphrase: str | None, country: str | None) -> str:
    ssid = ssid_text.encode("utf-8")
    if not 1 <= len(ssid) <= 32:
        raise SetupError("wifi_ssid must be 1 to 32 bytes long")
    lines = [
        "# Written by petcam-firstboot from petcam-setup.txt on the boot partition (docs/image.md).",
        "ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev",
        "update_config=0",
    ]
    if country:
        lines.append(f"country={country}")
    lines += ["", "network={", f"\tssid={wpa_ssid(ssid)}", "\tscan_ssid=1"]
    if passphrase:
        lines += ["\tkey_mgmt=WPA-PSK WPA-PSK-SHA256", f"\tpsk={wpa_psk(ssid, passphrase)}"]
    else:
        lines.append("\tkey_mgmt=NONE")
    lines.append("}")
    return "\n".join(lines) + "\n"


def toml_string(value: str) -> str:
    """A TOML basic string: JSON's escapes (\\", \\\\, \\n, \\uXXXX) are all valid TOML escapes."""
    return json.dumps(value, ensure_ascii=False)


def set_toml_keys(text: str, section: str, values: dict[str, str]) -> str:
    """Replace (or add) `key = "value"` lines in one [section], keeping every comment and line else."""
    lines = text.splitlines()
    start = end = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            if start is not None:
                end = i
                break
            if stripped == f"[{section}]":
                start = i
    if start is None:
        lines += ["", f"[{section}]"]
        start, end = len(lines) - 1, len(lines)
    elif end is None:
        end = len(lines)
    pending = dict(values)
    for i in range(start + 1, end):
        key = lines[i].split("=", 1)[0].strip()
        if "=" in lines[i] and not lines[i].lstrip().startswith("#") and key in pending:
            lines[i] = f"{key} = {toml_string(pending.pop(key))}"
    insert_at = end
    while insert_at > start + 1 and not lines[insert_at - 1].strip():
        insert_at -= 1
    lines[insert_at:insert_at] = [f"{key} = {toml_string(value)}" for key, value in pending.items()]
    return "\n".join(lines) + "\n"


def toml_value(text: str, section: str, key: str) -> str | None:
    """A string value from a TOML file, read with the standard library's parser."""
    try:
        value = tomllib.loads(text).get(section, {}).get(key)
    except tomllib.TOMLDecodeError:
        return None
    return value if isinstance(value, str) else None


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Atomically: a power cut leaves the old file or the new one, never half of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def wipe_file(path: Path, new_text: str) -> None:
    """Overwrite the old bytes where they lie, then write the new text.

    On FAT a truncating rewrite frees the old clusters with the passphrase still in them; writing
    zeros over the file first, without truncating, puts the zeros in those same clusters.
    """
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        f.write(b"\0" * size)
        f.flush()
        os.fsync(f.fileno())
        f.seek(0)
        f.truncate()
        f.write(new_text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


Run = Callable[[Sequence[str], str], str]


def run_command(argv: Sequence[str], stdin: str = "") -> str:
    """Run one of the system's tools (absolute path, argument list, no shell); its output."""
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv[0], done.stdout, done.stderr.strip())
    return done.stdout


@dataclass
class System:
    """Where the settings go: the real root in the image, a temporary directory in the tests."""

    root: Path = Path("/")
    boot: Path = Path("/boot/firmware")
    run: Run = run_command
    live: bool = True  # the running system: set the kernel's host name, grow the root partition
    log: Callable[[str], None] = print

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")


def apply_hostname(system: System, name: str) -> None:
    write_file(system.path("/etc/hostname"), name + "\n")
    hosts = system.path("/etc/hosts")
    lines = hosts.read_text().splitlines() if hosts.exists() else ["127.0.0.1\tlocalhost"]
    lines = [line for line in lines if not line.startswith("127.0.1.1")]
    lines.insert(1 if lines else 0, f"127.0.1.1\t{name}")
    write_file(hosts, "\n".join(lines) + "\n")
    if system.live:
        socket.sethostname(name)
    system.log(f"host name: {name}")


def apply_timezone(system: System, zone: str) -> None:
    localtime = system.path("/etc/localtime")
    tmp = localtime.with_name(".localtime.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(f"/usr/share/zoneinfo/{zone}")
    tmp.replace(localtime)
    if system.path("/etc/timezone").exists():
        write_file(system.path("/etc/timezone"), zone + "\n")
    system.log(f"time zone: {zone}")


def apply_wifi(system: System, settings: Settings) -> None:
    ssid = settings.values.get("wifi_ssid")
    country = settings.values.get("wifi_country")
    if country:
        country = check_country(country)
    if not ssid:
        if "wifi_passphrase" in settings.values:
            raise SetupError("wifi_passphrase is set but wifi_ssid is not")
        if country:
            conf = system.path(f"/etc/wpa_supplicant/wpa_supplicant-{WLAN}.conf")
            if conf.exists():  # a new country for the network configured before
                text = re.sub(r"(?m)^country=.*\n", "", conf.read_text())
                text = text.replace("update_config=0\n", f"update_config=0\ncountry={country}\n", 1)
                write_file(conf, text, 0o600)
                system.log(f"Wi-Fi country: {country}")
        return
    passphrase = settings.values.get("wifi_passphrase")
    conf_text = wpa_supplicant_conf(ssid, passphrase, country)
    write_file(system.path(f"/etc/wpa_supplicant/wpa_supplicant-{WLAN}.conf"), conf_text, 0o600)
    security = "WPA2 (key stored, not the passphrase)" if passphrase else "open network"
    system.log(f"Wi-Fi: network {ssid!r}, {security}, country {country or 'not set'}")


def apply_network(system: System, settings: Settings) -> None:
    """relay_url and network_mode into /etc/petcamd/petcamd.toml, checked by petcamd itself."""
    updates: dict[str, str] = {}
    if "relay_url" in settings.values:
        updates["relay_url"] = settings.values["relay_url"].strip()
    mode = settings.values.get("network_mode")
    if mode is not None:
        mode = mode.strip().lower()
        if mode not in ("local", "internet"):
            raise SetupError(f"network_mode must be local or internet, not {mode!r}")
        updates["mode"] = mode
    if not updates:
        return
    config = system.path("/etc/petcamd/petcamd.toml")
    old = config.read_text() if config.exists() else ""
    new = set_toml_keys(old, "network", updates)
    if toml_value(new, "network", "mode") == "internet" and not toml_value(new, "network", "relay_url"):
        raise SetupError("network_mode = internet needs relay_url")
    candidate = config.with_name(".petcamd.toml.new")
    write_file(candidate, new)
    try:
        try:
            system.run([PETCAMD, "--check-config", "--config", str(candidate)], "")
        except subprocess.CalledProcessError as exc:
            raise SetupError(f"petcamd rejects the network settings: {exc.stderr}") from None
        candidate.replace(config)
    finally:
        candidate.unlink(missing_ok=True)
    system.log("petcamd network: " + ", ".join(f"{k} = {v}" for k, v in updates.items()))


def apply_ssh(system: System, settings: Settings) -> None:
    keys = settings.authorized_keys
    for key in keys:
        if not _SSH_KEY.fullmatch(key):
            raise SetupError("ssh_authorized_key must be one OpenSSH public key line (ssh-ed25519 AAAA...)")
    if keys:
        ssh_dir = system.path("/root/.ssh")
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = ssh_dir / "authorized_keys"
        existing = path.read_text().splitlines() if path.exists() else []
        write_file(path, "\n".join(existing + [k for k in keys if k not in existing]) + "\n", 0o600)
        system.log(f"SSH: {len(keys)} authorized key(s) for root")
    if "ssh" not in settings.values:
        return
    on = parse_switch(settings.values["ssh"])
    if on and not system.path("/root/.ssh/authorized_keys").exists():
        system.log("SSH: turned on, but no ssh_authorized_key is set: nobody can log in (no passwords)")
    action = ["enable", "--now"] if on else ["disable", "--now"]
    system.run([SYSTEMCTL, *action, "--no-block", "ssh.service"], "")
    system.log(f"SSH server: {'on' if on else 'off'}")


def unique_hostname() -> str:
    return HOSTNAME_PREFIX + secrets.token_hex(2)


def grow_root(system: System) -> None:
    """Grow the root partition to the end of the card and the ext4 in it, while mounted.

    sfdisk keeps the partition's start and moves its end ("," then "+"); --no-reread skips the
    in-use check, the kernel learns the new size from partx, and resize2fs grows ext4 online.
    """
    source = system.run([FINDMNT, "-n", "-o", "SOURCE", "/"], "").strip()
    part = Path("/sys/class/block") / Path(source).resolve().name
    if not (part / "partition").exists():
        system.log(f"root file system: {source} is not a partition; not grown")
        return
    number = int((part / "partition").read_text())
    disk_sys = part.resolve().parent
    disk = f"/dev/{disk_sys.name}"
    sectors = int((disk_sys / "size").read_text())
    end = int((part / "start").read_text()) + int((part / "size").read_text())
    if (sectors - end) * 512 < MIN_GROWTH_BYTES:
        system.log(f"root file system: already fills {disk}")
        return
    system.run([SFDISK, "--no-reread", "--no-tell-kernel", "-q", "-N", str(number), disk], ", +\n")
    system.run([PARTX, "-u", "--nr", str(number), disk], "")
    system.run([RESIZE2FS, source], "")
    size = shutil.disk_usage("/").total
    system.log(f"root file system: grown to {size / 2**30:.1f} GiB")


def summary(settings: Settings) -> str:
    """What was applied, for the wiped file's header: names and non-secret values only."""
    shown = [k if k in SECRET_KEYS else f"{k} = {v}" for k, v in settings.values.items()]
    if settings.authorized_keys:
        shown.append(f"{len(settings.authorized_keys)} ssh_authorized_key line(s)")
    return "; ".join(shown)


def apply_settings(system: System, settings: Settings) -> list[str]:
    """Apply every setting it can; the problems of those it cannot."""
    problems = list(settings.problems)
    steps: list[tuple[str, Callable[[], None]]] = []
    if "hostname" in settings.values:
        steps.append(
            ("hostname", lambda: apply_hostname(system, check_hostname(settings.values["hostname"])))
        )
    if "timezone" in settings.values:
        zoneinfo = system.path("/usr/share/zoneinfo")
        steps.append(
            (
                "timezone",
                lambda: apply_timezone(system, check_timezone(settings.values["timezone"], zoneinfo)),
            )
        )
    steps.append(("Wi-Fi", lambda: apply_wifi(system, settings)))
    steps.append(("network", lambda: apply_network(system, settings)))
    steps.append(("SSH", lambda: apply_ssh(system, settings)))
    for name, step in steps:
        try:
            step()
        except (SetupError, OSError, subprocess.CalledProcessError) as exc:
            problems.append(f"{name}: {exc}")
    return problems


def log_output(system: System, output: str) -> None:
    for line in output.splitlines():
        system.log(line)


def first_boot(system: System, settings: Settings) -> None:
    """Once per card: the steps every copy of the image needs to become its own camera."""
    steps: list[tuple[str, Callable[[], None]]] = [
        ("SSH host keys", lambda: log_output(system, system.run([SSH_KEYGEN, "-A"], "")))
    ]
    if system.live:
        steps.insert(0, ("growing the root file system", lambda: grow_root(system)))
    for name, step in steps:
        try:
            step()
        except (OSError, ValueError, subprocess.CalledProcessError) as exc:
            system.log(f"first boot: {name} failed: {exc}")
    try:
        check_hostname(settings.values.get("hostname", ""))
    except SetupError:  # none given, or one that will be refused: never keep the image's shared name
        apply_hostname(system, unique_hostname())
    system.log("first boot: done (systemd made the new machine-id: the image ships 'uninitialized')")


def main(argv: Sequence[str] | None = None, system: System | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/"), help="apply to this root (tests)")
    parser.add_argument("--boot", type=Path, default=Path("/boot/firmware"), help="the boot partition")
    parser.add_argument("--template", action="store_true", help=f"print the empty {SETUP_FILE} and exit")
    args = parser.parse_args(argv)
    if args.template:
        sys.stdout.write(TEMPLATE)
        return 0
    if system is None:
        system = System(root=args.root, boot=args.boot, live=args.root == Path("/"))
    marker = system.path("/var/lib/petcam-image/first-boot-done")
    setup = system.boot / SETUP_FILE
    try:
        text = setup.read_text(encoding="utf-8", errors="replace") if setup.exists() else ""
    except OSError as exc:
        system.log(f"cannot read {setup}: {exc}")
        text = ""
    settings = parse_setup(text)
    if not marker.exists():
        first_boot(system, settings)
    problems = apply_settings(system, settings) if settings else settings.problems
    for problem in problems:
        system.log(f"{SETUP_FILE}: {problem}")
    if settings or problems:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        header = f"# Read at boot ({stamp}); applied unless listed below: {summary(settings) or 'nothing'}.\n"
        if problems:
            header += "".join(f"# Not applied: {p}\n" for p in problems)
        try:
            wipe_file(setup, header + "\n" + TEMPLATE)
            system.log(f"{setup}: settings applied and removed from the file")
        except OSError as exc:
            system.log(f"{setup}: cannot empty the file: {exc}")
    if not marker.exists():
        write_file(marker, datetime.datetime.now(datetime.UTC).isoformat() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
