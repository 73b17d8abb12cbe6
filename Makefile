# The two commands of the README. Both set up (or reuse) the stage environments first.
Q := .venvs/quantize/bin

.PHONY: setup demo test test-fast
setup:
	envs/setup

demo: setup
	PATH="$(CURDIR)/$(Q):$$PATH" dvc repro

test: setup
	PATH="$(CURDIR)/$(Q):$$PATH" $(Q)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	PATH="$(CURDIR)/$(Q):$$PATH" $(Q)/python -m pytest -m "not slow" $(PYTEST_ARGS)
