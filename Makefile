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

.PHONY: soak

## The reliability tests at the issue's scale (500 viewer cycles, 50 camera faults, 20 relay restarts,
## 50,000 fuzz frames); prints the figures for docs/reliability.md, kept in out/soak/.
soak: $(VENV)/.installed
	@rm -rf out/soak
	PETCAMD_SOAK=1 $(VPY) -m pytest -p no:cacheprovider tests/test_soak.py tests/test_faults.py \
		tests/test_fuzz_live.py tests/test_resource_limits.py
	@cat out/soak/*.txt

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

# The SD-card image (docs/image.md): an arm64 root from Debian's archive built under qemu-user, the
# project's .deb installed with apt, a FAT boot and ext4 root partition made without mounting.
IMAGE_PROFILE ?= debian
IMAGE_DEBS := mmdebstrap qemu-user-static binfmt-support arch-test mtools dosfstools fdisk e2fsprogs xz-utils
IMAGE_TEST_DEBS := qemu-system-arm mtools fdisk e2fsprogs xz-utils zbar-tools dpkg-dev

.PHONY: image image-test

## out/image/petcamd-<version>-$(IMAGE_PROFILE)-arm64.img.xz and .sha256 (IMAGE_PROFILE=debian or raspios).
image:
	@scripts/ensure-system-deps $(DEB_BUILD_DEBS) $(IMAGE_DEBS)
	@image/build $(IMAGE_PROFILE)

## Read that image's partitions and files, boot it under qemu-system-aarch64 and check the running camera.
image-test:
	@scripts/ensure-system-deps $(IMAGE_TEST_DEBS)
	@scripts/image-test $(IMAGE_PROFILE)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
