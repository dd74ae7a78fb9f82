# stillpoint.snapshots: `make demo`, `make test`, `make bench` work on a fresh Debian machine as root.
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
BUILD := $(CURDIR)/.build
COLLECTIONS := $(BUILD)/collections
LINK := $(COLLECTIONS)/ansible_collections/stillpoint/snapshots
SANITY_ROOT := $(BUILD)/sanity/ansible_collections
CORE_OLDEST := $(BUILD)/core-oldest
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export PATH := $(BIN):$(PATH)
# Tests and demos never reach the real instance metadata service.
export AWS_EC2_METADATA_DISABLED := true

.PHONY: help deps system-deps link test unit integration sanity lint docs-check galaxy-check iam-check ee-check lab lab-image demo bench clean

help:
	@echo "make demo   - local EC2 endpoint, a loop-device array: back it up, list the catalog, destroy the data, restore it"
	@echo "make test   - everything CI runs: unit, integration (real freezes on loop devices), sanity, lint, lab (qemu VMs)"
	@echo "make galaxy-check - build the tarball, galaxy-importer on it, install it offline, ansible-doc and --syntax-check from there"
	@echo "make iam-check - the IAM policies proved: moto's IAM enforcement, iam-simulate for tag conditions, parliament"
	@echo "make ee-check - ansible-builder create on execution-environment.yml, checks of the build context"
	@echo "make lab    - the lab tier alone: qemu VMs as EC2 instances, LVM/mdadm/DRBD for real (image cached in ~/.cache)"
	@echo "make bench  - freeze window (stock vs host vs controller mode), restore downtime and re-run cost, database stall (stock vs ours), group window, fleet (quick; the 200-instance run: python benchmarks/fleet.py)"

# Debian packages the tests and demo need (only the missing ones are installed).
system-deps:
	@need=""; \
	command -v fsfreeze >/dev/null || need="$$need util-linux"; \
	command -v losetup >/dev/null || need="$$need mount"; \
	command -v mkfs.ext4 >/dev/null || need="$$need e2fsprogs"; \
	command -v mkfs.btrfs >/dev/null || need="$$need btrfs-progs"; \
	command -v timeout >/dev/null || need="$$need coreutils"; \
	command -v git >/dev/null || need="$$need git"; \
	command -v qemu-system-x86_64 >/dev/null || need="$$need qemu-system-x86"; \
	command -v qemu-img >/dev/null || need="$$need qemu-utils"; \
	command -v mmdebstrap >/dev/null || need="$$need mmdebstrap"; \
	command -v ssh >/dev/null || need="$$need openssh-client"; \
	command -v npm >/dev/null || need="$$need npm"; \
	command -v mariadbd >/dev/null || need="$$need mariadb-server"; \
	command -v mariadb >/dev/null || need="$$need mariadb-client"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need="$$need postgresql"; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || need="$$need python3-venv"; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$need (run as root or install them)"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$need; \
	fi

$(BIN)/.deps: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

link:
	@mkdir -p $(dir $(LINK))
	@[ -L $(LINK) ] || ln -sfn $(CURDIR) $(LINK)

deps: system-deps $(BIN)/.deps link

# $(call tool-venv,DIR,REQUIREMENTS): a virtualenv of its own for a tool whose pins would clash with .venv's.
define tool-venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install -q --upgrade pip
	$(1)/bin/pip install -q -r $(2)
	touch $(1)/.deps
endef

# Fast tier first: library and module units, then real freezes and the local EC2 endpoint.
unit: deps
	$(BIN)/python -m pytest -q tests/unit

# two workers, a test file whole on one: most of the tier waits on ansible-playbook runs and the endpoint
# (12 min 43 s on one process, 6 min 6 s on two, quiet, 2026-12-03); each worker starts its own endpoint
integration: deps $(CORE_OLDEST)/.deps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests/integration

# The oldest ansible-core the collection declares (meta/runtime.yml), for the AWX-shaped playbook runs of
# tests/integration/test_awx_runner.py (ansible-runner drives both it and .venv's newest one).
$(CORE_OLDEST)/.deps: tests/integration/requirements-oldest-core.txt requirements.txt
	$(call tool-venv,$(CORE_OLDEST),tests/integration/requirements-oldest-core.txt)

# ansible-test wants the collection under ansible_collections/<ns>/<name>: test a copy.
sanity: deps
	rm -rf $(BUILD)/sanity && mkdir -p $(SANITY_ROOT)/stillpoint/snapshots $(SANITY_ROOT)/amazon
	git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t $(SANITY_ROOT)/stillpoint/snapshots
	aws=$$($(BIN)/python -c 'import ansible_collections.amazon.aws as m; print(list(m.__path__)[0])') && \
	  test -d "$$aws" && ln -s "$$aws" $(SANITY_ROOT)/amazon/aws
	# the copy lies inside this repository's ignored .build/: give it its own git index
	# validate-modules reads a PowerShell module's argument spec with pwsh, which cannot be installed here (no
	# Debian package, no Microsoft repository): the .ps1 is skipped in this copy only (a shipped ignore file is
	# refused by ansible-lint's production profile and galaxy-importer); its .py documentation is still validated
	# and tests/unit/test_powershell_syntax.py parses the PowerShell
	mkdir -p $(SANITY_ROOT)/stillpoint/snapshots/tests/sanity && \
	  for ps in plugins/modules/*.ps1; do echo "$$ps validate-modules!skip"; done \
	  > $(SANITY_ROOT)/stillpoint/snapshots/tests/sanity/ignore-$$($(BIN)/python -c 'import ansible.release as r; print(".".join(r.__version__.split(".")[:2]))').txt
	cd $(SANITY_ROOT)/stillpoint/snapshots && git init -q && git add -A
	$(BIN)/python tests/sanity/pip_bootstrap.py
	cd $(SANITY_ROOT)/stillpoint/snapshots && $(BIN)/ansible-test sanity --requirements --python 3.11 --local --color no

lint: deps
	$(BIN)/ansible-lint --profile production

docs-check: deps
	@for m in $$(ls plugins/modules/*.py | xargs -n1 basename | sed 's/\.py$$//'); do \
	  $(BIN)/ansible-doc stillpoint.snapshots.$$m >/dev/null || { echo "ansible-doc failed for $$m"; exit 1; }; \
	done; echo "ansible-doc: all modules render"

# The release artifact as Galaxy/Automation Hub import it and a user installs it (tests/galaxy/check.py): build,
# nothing generated in the tarball, galaxy-importer (offline, no containers), `ansible-galaxy collection install
# --offline`, then ansible-doc and --syntax-check from the installed copy. galaxy-importer has its own virtualenv:
# it pins attrs<24, which .venv has newer.
GALAXY_IMPORTER := $(BUILD)/galaxy-importer

$(GALAXY_IMPORTER)/.deps: tests/galaxy/requirements.txt
	$(call tool-venv,$(GALAXY_IMPORTER),tests/galaxy/requirements.txt)

galaxy-check: deps $(GALAXY_IMPORTER)/.deps
	$(BIN)/python tests/galaxy/check.py --importer $(GALAXY_IMPORTER)/bin/python --work $(BUILD)/galaxy

# IAM policies (iam/): procedures run with exactly their policy against the endpoint with moto's IAM
# enforcement, one action removed at a time, the tag conditions through iam-simulate (npm), parliament's lint
# (tests/iam, about 70 s). parliament and iam-simulate each have their own install under .build.
IAM_PARLIAMENT := $(BUILD)/parliament
IAM_NODE := $(BUILD)/iam-node

$(IAM_PARLIAMENT)/.deps: tests/iam/requirements.txt
	$(call tool-venv,$(IAM_PARLIAMENT),tests/iam/requirements.txt)

$(IAM_NODE)/.deps: tests/iam/package.json tests/iam/package-lock.json
	mkdir -p $(IAM_NODE)
	cp tests/iam/package.json tests/iam/package-lock.json $(IAM_NODE)/
	cd $(IAM_NODE) && npm ci --no-audit --no-fund --ignore-scripts --silent
	touch $@

iam-check: deps $(IAM_PARLIAMENT)/.deps $(IAM_NODE)/.deps
	STILLPOINT_IAM_REQUIRED=1 $(BIN)/python -m pytest -q tests/iam

# The execution environment's build context (tests/ee/check.py): ansible-builder create, no container runtime.
# ansible-builder has its own virtualenv (its jsonschema/referencing/packaging pins stay out of .venv).
ANSIBLE_BUILDER := $(BUILD)/ansible-builder

$(ANSIBLE_BUILDER)/.deps: tests/ee/requirements.txt
	$(call tool-venv,$(ANSIBLE_BUILDER),tests/ee/requirements.txt)

ee-check: deps $(ANSIBLE_BUILDER)/.deps
	$(BIN)/python tests/ee/check.py --builder $(ANSIBLE_BUILDER)/bin/ansible-builder --work $(BUILD)/ee-check

# The VM lab tier (tests/lab): qemu TCG guests from an mmdebstrap image cached outside the tree; a
# timing table ends the run. Slowest, so last. Two pytest-xdist workers, one test module each at a
# time (--dist loadfile). Both guest images (bookworm's 6.1 kernel, and bookworm-backports' 6.12 that
# test_lvm_cross_lv.py boots) are built before the tests, not inside a test's time.
# the backports image is built while the default image's resume template boots (one core each), so the lab
# tier starts with both images and the template ready
lab-image: deps
	$(BIN)/python -m tests.lab.image
	$(BIN)/python -m tests.lab.image --kernel backports & backports=$$!; \
	$(BIN)/python -m tests.lab.image --resume-template; rc=$$?; wait $$backports && exit $$rc

lab: lab-image
	STILLPOINT_LAB_REQUIRED=1 $(BIN)/python -m pytest -q -rs -n 2 --dist loadfile --no-loadscope-reorder tests/lab

test: unit integration docs-check galaxy-check iam-check ee-check sanity lint lab

demo: deps
	$(BIN)/python playbooks/demo/demo.py

bench: deps
	$(BIN)/python benchmarks/freeze_window.py
	$(BIN)/python benchmarks/restore.py
	$(BIN)/python benchmarks/app_quiesce.py
	$(BIN)/python benchmarks/app_quiesce.py --busy-s 3
	$(BIN)/python benchmarks/group_window.py
	$(BIN)/python benchmarks/group_drain.py
	$(BIN)/python benchmarks/fleet.py --quick

clean:
	rm -rf $(BUILD) .pytest_cache tests/output
