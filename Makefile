# make setup: the stage environments (quantbuild setup); make demo: the whole pipeline (dvc repro).
Q := .venvs/build/bin
# The quantbuild this project was scaffolded with (`quantbuild init`); a runner without it installs it.
QUANTBUILD_VERSION := 0.1.0

.PHONY: setup demo
setup:
	@if grep -qs '^name = "quantbuild"$$' pyproject.toml; then envs/setup; \
	else command -v quantbuild >/dev/null || python3 -m pip install -q "quantbuild==$(QUANTBUILD_VERSION)"; \
	quantbuild setup; fi

demo: setup
	PATH="$(CURDIR)/$(Q):$$PATH" dvc repro

# quantbuild's own checkout adds its test targets here.
-include quantbuild-dev.mk
