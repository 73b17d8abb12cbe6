# quantbuild's own test targets (its checkout only; the Makefile includes this file when present).
.PHONY: test test-fast
test: setup
	PATH="$(CURDIR)/$(Q):$$PATH" $(Q)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	PATH="$(CURDIR)/$(Q):$$PATH" $(Q)/python -m pytest -m "not slow" $(PYTEST_ARGS)
