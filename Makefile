# Two entry points for a new user: `make serve` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup system-deps serve test test-v2 lint unit bench bench-peers bench-peers-deps clean

# System Postgres server binaries are used when present; otherwise pgserver (PyPI) brings them.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; \
	then $(BIN)/pip install -q -e '.[dev]'; else $(BIN)/pip install -q -e '.[dev,embedded]'; fi
	touch $@

setup: $(VENV)/.installed

# Debian packages the tests need (Postgres server, cc, busybox, prometheus): installed if missing.
system-deps:
	bash scripts/system-deps

serve: setup
	$(BIN)/scheduler serve

lint: setup
	$(BIN)/ruff check scheduler tests bench
	$(BIN)/mypy

test: system-deps lint
	$(BIN)/pytest

# The suites on a pure cgroup v2 host with systemd (a Debian 12 VM under qemu; built once into
# /var/cache/scheduler-v2vm). SUITES=core|systemd|full or pytest arguments; see scripts/v2vm/run.
test-v2:
	bash scripts/v2vm/run

unit: setup
	$(BIN)/pytest tests/unit

bench: setup
	$(BIN)/python bench/spine.py
	$(BIN)/python bench/control.py
	$(BIN)/python bench/claim.py
	$(BIN)/python bench/sampler.py

# Against peers (bench/README.md): pgqueuer from the optional extra `bench`; Slurm is
# measured when installed (make bench-peers-deps) and skipped with the reason otherwise.
bench-peers: setup
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/peers.py

# Slurm and munge from Debian's packages, for (d) of bench-peers; no daemon is started.
bench-peers-deps:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
