# nstask: the two commands a user runs are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export NSTASK_VENV := $(VENV)

# `make install` / `make uninstall` (scripts/install.sh): DESTDIR, PREFIX, INSTALL_DIR, SYSCONFDIR,
# UNITDIR, STATE_DIR, PURGE=1 (uninstall: task data and config too), SYSTEMD=0 (enable nothing).
DESTDIR ?=
PREFIX ?= /usr/local
INSTALL_DIR ?= /opt/nstask
SYSCONFDIR ?= /etc
UNITDIR ?= $(SYSCONFDIR)/systemd/system
STATE_DIR ?= /var/lib/nstask
PURGE ?= 0
SYSTEMD ?= auto
INSTALL_VARS = DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" INSTALL_DIR="$(INSTALL_DIR)" \
	SYSCONFDIR="$(SYSCONFDIR)" UNITDIR="$(UNITDIR)" STATE_DIR="$(STATE_DIR)" PURGE="$(PURGE)" \
	SYSTEMD="$(SYSTEMD)"

.PHONY: install uninstall dist
install:
	@env $(INSTALL_VARS) bash scripts/install.sh install

uninstall:
	@env $(INSTALL_VARS) bash scripts/install.sh uninstall

# A wheel and an sdist in dist/ (pip or pipx install them; the host packages come from
# scripts/bootstrap.sh).
dist: test-bootstrap
	rm -rf build
	$(PY) -m build --outdir dist .
	rm -rf build

.PHONY: demo test bootstrap test-bootstrap unit integration lint typecheck protos check-protos \
	bench bench-start clean

# Users (demo, bench) get a regular install; tests an editable one of this tree (see bootstrap.sh).
bootstrap:
	@bash scripts/bootstrap.sh

test-bootstrap:
	@bash scripts/bootstrap.sh --test

demo: bootstrap
	@$(PY) scripts/demo.py

test: test-bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) scripts/gen_protos.py --check
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

unit: test-bootstrap
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit

integration: test-bootstrap
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/integration

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy

protos:
	$(PY) scripts/gen_protos.py

check-protos:
	$(PY) scripts/gen_protos.py --check

bench: bootstrap
	$(PY) bench/launch.py

bench-start: bootstrap
	$(PY) bench/cli_start.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache

# Lab VM (issue 13, in progress): a Debian 12 image built with debootstrap, cached under
# NSTASK_LAB_CACHE (default /var/cache/nstask-lab), and a boot check under qemu (KVM, else TCG).
.PHONY: lab-image lab-check
lab-image:
	scripts/lab/build-image.sh

lab-check: lab-image
	scripts/lab/boot-check.sh

# The lab VM (scripts/lab/lab.sh): Vagrant + vagrant-libvirt with a local box built from
# Debian's packages (no download), KVM when it really runs a guest, else TCG.
.PHONY: lab lab-test lab-destroy lab-ssh
lab:
	scripts/lab/lab.sh up

lab-test:
	scripts/lab/lab.sh test

lab-destroy:
	scripts/lab/lab.sh destroy

lab-ssh:
	scripts/lab/lab.sh ssh
