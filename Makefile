# make setup: the stage environments (quantbuild setup); make demo: the whole pipeline (dvc repro).
Q := .venvs/quantize/bin

.PHONY: setup demo
setup:
	@if grep -qs '^name = "quantbuild"$$' pyproject.toml; then envs/setup; \
	elif command -v quantbuild >/dev/null; then quantbuild setup; \
	else echo "error: quantbuild is not installed here: pip install quantbuild, then make setup" >&2; exit 2; fi

demo: setup
	PATH="$(CURDIR)/$(Q):$$PATH" dvc repro

# quantbuild's own checkout adds its test targets here.
-include quantbuild-dev.mk
