# Two commands for a new user: `make demo` and `make test`. Both bootstrap .venv via `make setup`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATASET_DIR := /usr/share/datasets/fashion-mnist
DEBIAN_PACKAGES := dataset-fashion-mnist iproute2 openssl
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test test-fast demo clean debian

setup: $(STAMP) debian

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Debian packages: the Fashion-MNIST data set and `tc`. Installed only when missing and we are root.
debian:
	@missing=""; \
	for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	  else \
	    echo "warning: missing Debian packages:$$missing (run 'sudo apt-get install$$missing')"; \
	  fi; \
	fi

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

FAST ?=
demo: setup
	$(PY) -m demo $(if $(FAST),--fast,)

clean:
	rm -rf build demo-report .pytest_cache
