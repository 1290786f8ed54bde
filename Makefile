# The developer's entry points. `make run` and `make test` work on a fresh Debian / Raspberry Pi OS
# machine: they install what is missing (Debian packages, then the .venv) before doing their job.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Debian packages the dev loop and the tests use.
DEV_DEBS := python3-venv python3-dev dbus-daemon systemd zbar-tools
# Debian's own Python packages: the second test run and the .deb's dependencies (bookworm minimums).
SYSTEM_DEBS := python3-aiortc python3-av python3-aiohttp python3-cryptography python3-dbus-fast \
	python3-zeroconf python3-qrcode python3-pil python3-pytest python3-hypothesis

.PHONY: run test test-venv test-system lint system-deps dev-deps clean

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

## Run petcamd on the synthetic camera in Local Network Mode (session bus, state in ./dev-state).
run: $(VENV)/.installed
	@scripts/dev-run

## The whole suite: on the newest PyPI releases (.venv), then on Debian's packages (/usr/bin/python3).
test: test-venv test-system

# pytest exits 5 when it collects no test: not a failure of the code under test.
test-venv: $(VENV)/.installed
	$(VPY) -m pytest -p no:cacheprovider || [ $$? -eq 5 ]

test-system: dev-deps system-deps
	@scripts/test-system || [ $$? -eq 5 ]

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
