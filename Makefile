# The two commands of the README. Each sets up its venv itself (idempotent; ~7 min cold, seconds after).
#   make demo   the default (newest) stack in .venv, then the one-shot chat
#   make test   the whole suite on the newest stack (.venv), then the transformers-facing subset on the oldest
#               supported stack (.venv-oldest): what CI runs (.ci/run)
VENV ?= .venv
OLDEST_VENV ?= .venv-oldest
PY := $(VENV)/bin/python
OLDEST_TESTS := tests/models tests/verification tests/inference tests/tools

.PHONY: setup setup-oldest demo test test-newest test-oldest
setup:
	scripts/setup_env.sh $(VENV) newest

setup-oldest:
	scripts/setup_env.sh $(OLDEST_VENV) oldest

demo: setup
	$(PY) tools/chat.py --prompt "Please segment the largest shape in this image."

test: test-newest test-oldest

test-newest: setup
	$(PY) -m pytest -q tests

test-oldest: setup-oldest
	$(OLDEST_VENV)/bin/python -m pytest -q $(OLDEST_TESTS)
