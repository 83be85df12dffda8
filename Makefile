# kata.runtime developer entry points. Run as root on Debian 12 (or Ubuntu):
#   make test   prepare the host, build the venv, lint, sanity, unit and integration tests
#   make demo   run playbooks/demo.yml against localhost
# See docs/development.md.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# The venv is built from the distribution's interpreter, whatever else is first on PATH:
# that is the Python a fresh Debian 12 host has.
BASE_PYTHON ?= /usr/bin/python3
PY_VERSION  := 3.11

ROOT        := $(CURDIR)
VENV        := $(ROOT)/.venv
LINT_VENV   := $(ROOT)/.venv-lint
BIN         := $(VENV)/bin
COLLECTIONS := $(ROOT)/.collections
SANITY_DIR  := $(COLLECTIONS)/sanity/ansible_collections/kata/runtime
OUTPUT      := $(ROOT)/tests/output
STEP        := $(ROOT)/scripts/step.sh

# venv tools first; ansible-test finds python$(PY_VERSION) on PATH too.
export PATH := $(BIN):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Tests and the demo see the collection through the symlink made by scripts/sync-collection.sh.
TEST_ENV := PYTHONPATH=$(COLLECTIONS) ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS)

# Single targets prepare what they need; `make test` runs deps once and passes SKIP_DEPS=1
# to the checks.
NEED_VENV       := $(if $(SKIP_DEPS),,venv)
NEED_LINT_VENV  := $(if $(SKIP_DEPS),,lint-venv)
NEED_BOOTSTRAP  := $(if $(SKIP_DEPS),,sanity-bootstrap)
NEED_COLLECTION := $(if $(SKIP_DEPS),,collection)
NEED_HOST       := $(if $(SKIP_DEPS),,host)

.PHONY: help deps host venv lint-venv collection sanity-bootstrap lint ecosystem docs sanity unit integration molecule test demo clean

help:
	@echo "make test         everything CI runs: deps, lint, ecosystem, sanity, unit, integration, molecule"
	@echo "make demo         run playbooks/demo.yml on localhost"
	@echo "make deps         host packages + libvirt daemons, .venv, .venv-lint, collection path"
	@echo "make lint         ruff check plugins tests benchmarks; docs/modules/ up to date"
	@echo "make ecosystem    antsibull-changelog lint, ansible-lint (production), galaxy build + galaxy-importer"
	@echo "make docs         regenerate docs/modules/ from the modules' own documentation"
	@echo "make sanity       ansible-test sanity (local, python $(PY_VERSION))"
	@echo "make unit         pytest tests/unit"
	@echo "make integration  pytest tests/integration (boots real guests)"
	@echo "make molecule     molecule test -s default: the kata_host role on this machine, then a sandbox"
	@echo "make clean        remove .venv, .venv-lint, .collections, .cache and test outputs"

# ---------------------------------------------------------------------------------------------
deps: host venv lint-venv collection sanity-bootstrap

host:
	@$(STEP) "host: packages and libvirt daemons" $(ROOT)/scripts/prepare-host.sh

# Cheap when nothing changed (stamp newer than requirements-dev.txt, venv made from
# BASE_PYTHON); otherwise (re)builds. See scripts/make-venv.sh.
venv:
	@$(STEP) "venv: .venv from $(BASE_PYTHON)" env BASE_PYTHON=$(BASE_PYTHON) $(ROOT)/scripts/make-venv.sh

# The ecosystem's own tools (ansible-lint, galaxy-importer, antsibull-changelog) in a venv of
# their own: their dependency pins need not agree with .venv's. Same stamp rule as .venv.
lint-venv:
	@$(STEP) "lint-venv: .venv-lint from $(BASE_PYTHON)" env BASE_PYTHON=$(BASE_PYTHON) \
	  VENV_NAME=.venv-lint REQUIREMENTS=requirements-lint.txt $(ROOT)/scripts/make-venv.sh

collection:
	@$(ROOT)/scripts/sync-collection.sh

sanity-bootstrap: venv
	@$(BIN)/python $(ROOT)/scripts/install-get-pip-standin.py

# ---------------------------------------------------------------------------------------------
# Only the directories that exist (a fresh clone may not have benchmarks/ yet).
LINT_PATHS := $(wildcard plugins tests benchmarks)

lint: $(NEED_VENV)
	@$(STEP) "lint: ruff check $(LINT_PATHS)" $(BIN)/ruff check $(LINT_PATHS)
	@$(STEP) "lint: docs/modules/ matches the modules' documentation" $(BIN)/python scripts/gen-module-docs.py --check

# The checks Galaxy and the Ansible tooling apply to a collection (scripts/ecosystem.sh); all
# three run, and the target fails when any failed.
ecosystem: $(NEED_LINT_VENV) $(NEED_COLLECTION)
	@rc=0; \
	$(STEP) "ecosystem: antsibull-changelog lint; CHANGELOG.rst up to date" $(ROOT)/scripts/ecosystem.sh changelog || rc=1; \
	$(STEP) "ecosystem: ansible-lint --profile production" $(ROOT)/scripts/ecosystem.sh lint || rc=1; \
	$(STEP) "ecosystem: galaxy collection build + galaxy-importer" $(ROOT)/scripts/ecosystem.sh galaxy || rc=1; \
	exit $$rc

docs: $(NEED_VENV)
	@$(BIN)/python scripts/gen-module-docs.py

# ansible-test needs its working directory inside a real ansible_collections/kata/runtime
# tree, so it runs from a synced copy of the working tree (scripts/run-sanity.sh).
sanity: $(NEED_VENV) $(NEED_BOOTSTRAP)
	@$(STEP) "sanity: ansible-test sanity --python $(PY_VERSION)" env PY_VERSION=$(PY_VERSION) $(ROOT)/scripts/run-sanity.sh

unit: $(NEED_VENV) $(NEED_COLLECTION)
	@$(STEP) "unit: pytest tests/unit" env $(TEST_ENV) $(ROOT)/scripts/run-pytest.sh tests/unit

# KATA_REQUIRE_RUN=1: on a host that make deps prepared, an all-skipped suite is a failure.
integration: $(NEED_HOST) $(NEED_VENV) $(NEED_COLLECTION)
	@$(STEP) "integration: pytest tests/integration" env $(TEST_ENV) KATA_REQUIRE_RUN=$${KATA_REQUIRE_RUN:-1} \
	  $(ROOT)/scripts/run-pytest.sh tests/integration

# The kata_host role applied to this machine (twice: the second run must change nothing, then
# in check mode), then a sandbox with a container booted and force-deleted in it.
molecule: $(NEED_HOST) $(NEED_VENV) $(NEED_COLLECTION)
	@$(STEP) "molecule: kata_host role (extensions/molecule/default)" env $(TEST_ENV) \
	  molecule test -s default

# deps must succeed; then every check runs even when an earlier one failed, so one run shows
# all problems, and the summary lists each step's result and time. Exit status: 0 only when
# every step passed.
test:
	@start=$$(date +%s); \
	export STEP_LOG=$(OUTPUT)/steps.txt; mkdir -p $(OUTPUT); : >"$$STEP_LOG"; \
	$(MAKE) --no-print-directory deps; \
	failed=(); \
	for t in lint ecosystem sanity unit integration molecule; do \
	  $(MAKE) --no-print-directory SKIP_DEPS=1 $$t || failed+=("$$t"); \
	done; \
	echo; echo "===== make test summary ====="; cat "$$STEP_LOG"; \
	total=$$(( $$(date +%s) - start )); \
	if [ $${#failed[@]} -gt 0 ]; then \
	  echo "===== make test: FAILED ($${failed[*]}) after $${total}s =====" >&2; exit 1; \
	fi; \
	echo "===== make test: all steps passed in $${total}s ====="

# ---------------------------------------------------------------------------------------------
# localhost runs with the venv's Python, which has libvirt-python and the other module needs.
demo:
	@$(MAKE) --no-print-directory deps
	@$(STEP) "demo: ansible-playbook playbooks/demo.yml" env $(TEST_ENV) \
	  ansible-playbook -i localhost, -c local -e ansible_python_interpreter=$(BIN)/python playbooks/demo.yml

# Only paths inside the repository (.cache holds test artifacts such as the extracted kernel).
clean:
	rm -rf "$(VENV)" "$(LINT_VENV)" "$(COLLECTIONS)" "$(OUTPUT)" "$(ROOT)/.cache" "$(ROOT)/.pytest_cache" "$(ROOT)/.ruff_cache" \
	  "$(ROOT)/.ansible"
	find "$(ROOT)/plugins" "$(ROOT)/tests" "$(ROOT)/benchmarks" "$(ROOT)/scripts" \
	  -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
