# The two commands of the README. Each sets up its venv itself (idempotent; ~7 min cold, seconds after).
#   make demo   the default (newest) stack in .venv, then the one-shot chat
#   make lint   ruff check . (settings in ruff.toml: pycodestyle, pyflakes, line length 100)
#   make test   the lint, the whole suite on the newest stack (.venv), then the transformers-facing subset on
#               the oldest supported stack (.venv-oldest): what CI runs (.ci/run)
VENV ?= .venv
OLDEST_VENV ?= .venv-oldest
PY := $(VENV)/bin/python
# on the oldest stack: what touches transformers (the LLM, generation, chat, the parity checks, the chat CLI)
OLDEST_TESTS := tests/models tests/verification tests/inference tests/tools/test_chat_cli.py

.PHONY: setup setup-oldest demo lint test test-newest test-oldest
setup:
	scripts/setup_env.sh $(VENV) newest

setup-oldest:
	scripts/setup_env.sh $(OLDEST_VENV) oldest

demo: setup
	$(PY) tools/chat.py --prompt "Please segment the largest shape in this image."

lint: setup
	$(VENV)/bin/ruff check .

test: lint test-newest test-oldest

test-newest: setup
	$(PY) -m pytest -q tests

test-oldest: setup-oldest
	$(OLDEST_VENV)/bin/python -m pytest -q $(OLDEST_TESTS)
