# The developer's entry points. `make run` and `make test` work on a fresh Debian / Raspberry Pi OS
# machine: they install what is missing (Debian packages, then the .venv) before doing their job.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Debian packages the dev loop and the tests use.
DEV_DEBS := python3-venv python3-dev dbus-daemon systemd zbar-tools avahi-daemon iproute2
# Debian's own Python packages: the second test run and the .deb's dependencies (bookworm minimums).
SYSTEM_DEBS := python3-aiortc python3-av python3-aiohttp python3-cryptography python3-dbus-fast \
	python3-zeroconf python3-qrcode python3-pil python3-pytest python3-hypothesis python3-redis

# What only the tests need, not `make run`: a real browser for the web viewer's end-to-end tests.
TEST_DEBS := chromium

.PHONY: run test test-venv test-system lint system-deps dev-deps test-deps clean deb deb-test

$(VENV)/.installed: pyproject.toml
	@scripts/ensure-system-deps $(DEV_DEBS)
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test,lint]'
	@touch $@

dev-deps:
	@scripts/ensure-system-deps $(DEV_DEBS)

system-deps:
	@scripts/ensure-system-deps $(SYSTEM_DEBS)

test-deps:
	@scripts/ensure-system-deps $(TEST_DEBS)

## Run petcamd on the synthetic camera in Local Network Mode (session bus, state in ./dev-state).
run: $(VENV)/.installed
	@scripts/dev-run

## The whole suite: on the newest PyPI releases (.venv), then on Debian's packages (/usr/bin/python3).
test: test-venv test-system

# pytest exits 5 when it collects no test: not a failure of the code under test.
test-venv: $(VENV)/.installed test-deps
	$(VPY) -m pytest -p no:cacheprovider || [ $$? -eq 5 ]

test-system: dev-deps system-deps test-deps
	@scripts/test-system || [ $$? -eq 5 ]

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: bench bench-quick

## Benchmarks, a few minutes: prints the table for docs/performance.md, writes bench/results/latest.json.
bench: $(VENV)/.installed
	$(VPY) -m bench.run

## The same benchmarks with fewer rounds and shorter windows (under a minute): bench/results/latest-quick.json.
bench-quick: $(VENV)/.installed
	$(VPY) -m bench.run --quick

# Building the .debs (debian/control's Build-Depends, plus lintian) and testing them in containers.
DEB_BUILD_DEBS := dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
	lintian git
DEB_TEST_DEBS := debootstrap systemd-container iproute2 procps util-linux

## Build petcamd and petcam-relay .debs into out/deb/; fails on a version mismatch or lintian warning.
deb:
	@scripts/ensure-system-deps $(DEB_BUILD_DEBS)
	@scripts/deb-test.d/build-debs out/deb

## Install the .debs in booted Debian bookworm and trixie containers and check the services.
deb-test:
	@scripts/ensure-system-deps $(DEB_BUILD_DEBS) $(DEB_TEST_DEBS)
	@scripts/deb-test

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
