"""The SD-card image's first-boot program (image/firstboot.py) against a root in a temporary directory.

It writes the same files it writes on a camera (wpa_supplicant's network, the host name, the time
zone, petcamd.toml, root's SSH keys) and wipes the boot partition's settings file; the system's
tools are recorded, except `petcamd --check-config`, which is the real one. `make image-test`
boots the image and checks the same on the running system.
"""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from petcamd.config import load_config
from tests.script_module import load_script

ROOT = Path(__file__).resolve().parents[1]
PASSPHRASE = "correct horse #battery"  # noqa: S105  (a test value; '#' must survive parsing)


fb = load_script(ROOT / "image" / "firstboot.py", "petcam_firstboot")


class Tools:
    """The system's tools as the program calls them: recorded; petcamd's config check is real."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], stdin: str) -> str:
        self.calls.append(list(argv))
        if argv[0] == fb.PETCAMD:
            done = subprocess.run(
                [sys.executable, "-m", "petcamd", *argv[1:]], capture_output=True, text=True, cwd=ROOT
            )
            if done.returncode:
                raise subprocess.CalledProcessError(
                    done.returncode, argv[0], done.stdout, done.stderr.strip()
                )
            return done.stdout
        return ""


@pytest.fixture
def system(tmp_path: Path) -> Any:
    root = tmp_path / "root"
    boot = tmp_path / "boot"
    (root / "etc" / "petcamd").mkdir(parents=True)
    (root / "etc" / "petcamd" / "petcamd.toml").write_text((ROOT / "config" / "petcamd.toml").read_text())
    (root / "etc" / "hostname").write_text("petcam\n")
    (root / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tpetcam\n::1\tlocalhost\n")
    zone = root / "usr" / "share" / "zoneinfo" / "Europe" / "London"
    zone.parent.mkdir(parents=True)
    zone.write_bytes(b"TZif")
    boot.mkdir()
    logs: list[str] = []
    return fb.System(root=root, boot=boot, run=Tools(), live=False, log=logs.append)


def setup_file(system: Any, body: str) -> Path:
    path: Path = system.boot / fb.SETUP_FILE
    path.write_text(body)
    return path


def test_ieee_802_11i_passphrase_vectors() -> None:
    # IEEE 802.11i-2004, annex H.4.
    assert (
        fb.wpa_psk(b"IEEE", "password") == "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
    )
    assert (
        fb.wpa_psk(b"ThisIsASSID", "ThisIsAPassword")
        == "0dc0d6eb90555ed6419756b9a15ec3e3209b63df707dd508d14581f8982721af"
    )
    raw = "AB" * 32
    assert fb.wpa_psk(b"x", raw) == raw.lower()


def test_parse_tolerates_other_editors_and_reports_unknown_keys() -> None:
    text = (
        "\ufeff# comment\r\n"
        "wifi_ssid = Home Net\r\n"
        f'wifi_passphrase = "  {PASSPHRASE}  "\r\n'
        "wifi_country=gb\r\n"
        "hostname =\r\n"
        "ssh_authorized_key = ssh-ed25519 AAAA one\r\n"
        "ssh_authorized_key = ssh-ed25519 BBBB two\r\n"
        "wifi_pasphrase = oops\r\n"
        "just words\r\n"
    )
    settings = fb.parse_setup(text)
    assert settings.values == {
        "wifi_ssid": "Home Net",
        "wifi_passphrase": f"  {PASSPHRASE}  ",
        "wifi_country": "gb",
    }
    assert settings.authorized_keys == ["ssh-ed25519 AAAA one", "ssh-ed25519 BBBB two"]
    assert settings.problems == [
        "line 8: unknown key 'wifi_pasphrase' (did you mean 'wifi_passphrase'?)",
        "line 9: no '=' (expected key = value)",
    ]


def test_the_template_has_every_key_and_no_value() -> None:
    settings = fb.parse_setup(fb.TEMPLATE)
    assert not settings
    assert settings.problems == []
    keys = {line.split("=")[0].strip() for line in fb.TEMPLATE.splitlines() if "=" in line and line[0] != "#"}
    assert keys == set(fb.KEYS)


def test_wpa_supplicant_network_quoting() -> None:
    conf = fb.wpa_supplicant_conf("Home Net", PASSPHRASE, "GB")
    assert "country=GB\n" in conf
    assert '\tssid="Home Net"\n' in conf
    assert f"\tpsk={fb.wpa_psk(b'Home Net', PASSPHRASE)}\n" in conf
    assert PASSPHRASE not in conf
    # Quotes or non-ASCII bytes: the unambiguous hex form.
    for ssid in ('Say "hi"', "Café"):
        assert f"\tssid={ssid.encode().hex()}\n" in fb.wpa_supplicant_conf(ssid, None, None)
    assert "\tkey_mgmt=NONE\n" in fb.wpa_supplicant_conf("Open", None, None)
    with pytest.raises(fb.SetupError, match="8 to 63"):
        fb.wpa_supplicant_conf("Home", "short", None)
    with pytest.raises(fb.SetupError, match="1 to 32 bytes"):
        fb.wpa_supplicant_conf("x" * 33, PASSPHRASE, None)


def test_toml_edit_keeps_the_packaged_comments_and_loads(tmp_path: Path) -> None:
    packaged = (ROOT / "config" / "petcamd.toml").read_text()
    url = 'wss://relay.example.org/a"b\\c'
    edited = fb.set_toml_keys(packaged, "network", {"relay_url": url, "mode": "internet"})
    assert tomllib.loads(edited)["network"]["relay_url"] == url
    assert [line for line in packaged.splitlines() if line.startswith("#")] == [
        line for line in edited.splitlines() if line.startswith("#")
    ]
    changed = [(a, b) for a, b in zip(packaged.splitlines(), edited.splitlines(), strict=True) if a != b]
    assert changed == [
        ('mode = "local"', 'mode = "internet"'),
        ('relay_url = ""', f"relay_url = {fb.toml_string(url)}"),
    ]
    # A key the file lacks goes at the end of its section; a missing section is added.
    assert tomllib.loads(
        fb.set_toml_keys("[network]\nmode = 'local'\n\n[x]\n", "network", {"relay_url": "u"})
    ) == {
        "network": {"mode": "local", "relay_url": "u"},
        "x": {},
    }
    assert tomllib.loads(fb.set_toml_keys("", "network", {"mode": "local"})) == {"network": {"mode": "local"}}


def test_first_boot_applies_everything_and_wipes_the_file(system: Any) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOuJ5P owner@laptop"
    path = setup_file(
        system,
        f"wifi_ssid = Home Net\nwifi_passphrase = {PASSPHRASE}\nwifi_country = de\nhostname = Kitchen-Cam\n"
        "timezone = Europe/London\nrelay_url = wss://relay.example.org/\nssh = on\n"
        f"ssh_authorized_key = {key}\n",
    )
    assert fb.main(["--root", str(system.root), "--boot", str(system.boot)], system) == 0

    conf = system.path("/etc/wpa_supplicant/wpa_supplicant-wlan0.conf")
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    text = conf.read_text()
    assert "country=DE\n" in text
    assert '\tssid="Home Net"\n' in text
    assert f"\tpsk={fb.wpa_psk(b'Home Net', PASSPHRASE)}\n" in text
    assert system.path("/etc/hostname").read_text() == "kitchen-cam\n"
    assert "127.0.1.1\tkitchen-cam" in system.path("/etc/hosts").read_text().splitlines()
    assert system.path("/etc/localtime").readlink() == Path("/usr/share/zoneinfo/Europe/London")
    config = load_config(system.path("/etc/petcamd/petcamd.toml"))
    assert config.network.relay_url == "wss://relay.example.org/"
    assert config.network.mode == "local"  # internet only when the file says so
    keys = system.path("/root/.ssh/authorized_keys")
    assert keys.read_text() == key + "\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert [fb.SSH_KEYGEN, "-A"] in system.run.calls
    assert [fb.SYSTEMCTL, "enable", "--now", "--no-block", "ssh.service"] in system.run.calls
    assert system.path("/var/lib/petcam-image/first-boot-done").exists()

    wiped = path.read_text()
    assert PASSPHRASE not in wiped
    assert "wifi_passphrase; " in wiped.splitlines()[0]  # named as applied, value not shown
    assert wiped.splitlines()[0].startswith("# Read at boot (")
    assert not fb.parse_setup(wiped)


def test_unset_keys_change_nothing_and_later_boots_keep_the_name(system: Any) -> None:
    setup_file(system, fb.TEMPLATE)
    fb.main([], system)
    name = system.path("/etc/hostname").read_text().strip()
    assert re.fullmatch(r"petcam-[0-9a-f]{4}", name)
    assert not system.path("/etc/wpa_supplicant").exists()
    assert [fb.SYSTEMCTL, "enable", "--now", "--no-block", "ssh.service"] not in system.run.calls
    assert (system.boot / fb.SETUP_FILE).read_text() == fb.TEMPLATE  # nothing to wipe: untouched
    config_before = system.path("/etc/petcamd/petcamd.toml").read_text()

    system.run.calls.clear()
    fb.main([], system)
    assert system.path("/etc/hostname").read_text().strip() == name
    assert system.run.calls == []  # no second first boot: host keys stay
    assert system.path("/etc/petcamd/petcamd.toml").read_text() == config_before


def test_a_bad_value_is_reported_in_the_file_and_the_rest_applies(system: Any) -> None:
    path = setup_file(
        system,
        "hostname = -bad-\ntimezone = Mars/Olympus\nnetwork_mode = internet\n"
        "wifi_ssid = Home\nwifi_passphrase = short\nssh = off\n",
    )
    config_before = system.path("/etc/petcamd/petcamd.toml").read_text()
    fb.main([], system)
    wiped = path.read_text()
    assert "# Not applied: hostname: must be 1 to 63 letters" in wiped
    assert "# Not applied: timezone: 'Mars/Olympus' is not a known time zone" in wiped
    assert "# Not applied: Wi-Fi: wifi_passphrase must be 8 to 63" in wiped
    assert "# Not applied: network: network_mode = internet needs relay_url" in wiped
    assert "short" not in wiped
    assert system.path("/etc/petcamd/petcamd.toml").read_text() == config_before
    assert not system.path("/etc/wpa_supplicant/wpa_supplicant-wlan0.conf").exists()
    assert re.fullmatch(r"petcam-[0-9a-f]{4}\n", system.path("/etc/hostname").read_text())
    assert [fb.SYSTEMCTL, "disable", "--now", "--no-block", "ssh.service"] in system.run.calls


def test_petcamd_itself_rejects_a_malformed_relay_url(system: Any) -> None:
    path = setup_file(system, "relay_url = ftp://relay.example.org/\nnetwork_mode = internet\n")
    config_before = system.path("/etc/petcamd/petcamd.toml").read_text()
    fb.main([], system)
    assert "# Not applied: network: petcamd rejects the network settings" in path.read_text()
    assert system.path("/etc/petcamd/petcamd.toml").read_text() == config_before
    assert not list(system.path("/etc/petcamd").glob(".*"))  # no candidate file left behind


def test_internet_mode_with_a_relay(system: Any) -> None:
    setup_file(system, "network_mode = Internet\nrelay_url = wss://relay.example.org:8443/\n")
    fb.main([], system)
    config = load_config(system.path("/etc/petcamd/petcamd.toml"))
    assert (config.network.mode, config.network.relay_url) == ("internet", "wss://relay.example.org:8443/")


def test_a_new_country_alone_updates_the_configured_network(system: Any) -> None:
    setup_file(system, f"wifi_ssid = Home\nwifi_passphrase = {PASSPHRASE}\n")
    fb.main([], system)
    conf = system.path("/etc/wpa_supplicant/wpa_supplicant-wlan0.conf")
    assert "country=" not in conf.read_text()
    setup_file(system, "wifi_country = NL\n")
    fb.main([], system)
    text = conf.read_text()
    assert text.count("country=NL\n") == 1
    assert f"\tpsk={fb.wpa_psk(b'Home', PASSPHRASE)}\n" in text
