# Ciphervault: the two commands of the README, and the checks CI runs.
#   make run    set up and serve on the embedded default (SQLite, filesystem, no broker server)
#   make test   set up and run the test suite (installs what the suite needs when run as root)
#   make torture  the reliability suite at full size and the load run, with a summary

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
PORT ?= 8000
comma := ,

.PHONY: run test torture lint schema lock clean dev-install

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Ciphervault needs Python 3.11 or newer; set PYTHON=python3.11")'
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "Could not create $(VENV). On Debian or Ubuntu: apt-get install python3-venv" >&2; exit 1; }
	$(PIP) install --quiet --upgrade pip || { rm -rf $(VENV); exit 1; }

$(VENV)/.base-installed: pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e .
	@touch $@

# The TPM backend's library builds against the TSS2 C libraries (Debian's libtss2-dev), which
# `make test` installs first when run as root; without them the TPM tests are skipped, loudly.
DEV_EXTRAS = dev,pkcs11,kmip$(shell pkg-config --exists tss2-esys 2>/dev/null && echo ,tpm)
DEV_STAMP = $(VENV)/.dev-installed-$(subst $(comma),-,$(DEV_EXTRAS))

$(DEV_STAMP): pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[$(DEV_EXTRAS)]'
	@rm -f $(VENV)/.dev-installed-*
	@touch $@ $(VENV)/.base-installed

run: $(VENV)/.base-installed
	$(PY) manage.py serve --port $(PORT)

test:
	bash scripts/test-env.sh
	$(MAKE) --no-print-directory dev-install
	bash scripts/pytest.sh $(PYTEST_ARGS)

# Fault injection, fuzzing, isolation, schemathesis and secrets scan at full size, then 32 clients
# against gunicorn with PostgreSQL and Redis; writes var/torture/<time>/summary.md.
torture:
	bash scripts/torture.sh

dev-install: $(PY)
	@$(MAKE) --no-print-directory $(DEV_STAMP)

lint: dev-install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(PY) manage.py makemigrations --check --dry-run

# Regenerate the committed OpenAPI schema (the suite fails while it is stale).
schema: dev-install
	$(PY) manage.py spectacular --fail-on-warn --validate --file docs/openapi.yaml

# Re-resolve the pinned versions (needs the registries); commit the result.
lock:
	rm -rf /tmp/cvault-lock && $(PYTHON) -m venv /tmp/cvault-lock
	/tmp/cvault-lock/bin/pip install --quiet -e '.[dev,pkcs11,kmip,tpm]'
	( echo "# Pinned versions for every install of Ciphervault (both README commands use it)."; \
	  echo "# Regenerate with: make lock"; \
	  /tmp/cvault-lock/bin/pip freeze --exclude-editable | grep -v -i '^ciphervault' ) > $(CONSTRAINTS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
