# The two commands of the README. Each sets up .venv itself (idempotent; ~6 min cold, seconds after).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test
setup:
	scripts/setup_env.sh $(VENV)

demo: setup
	$(PY) tools/chat.py --prompt "Please segment the largest shape in this image."

test: setup
	$(PY) -m pytest -q tests
