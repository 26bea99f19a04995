# distinv: `make demo` and `make test` work on a fresh machine (they run `make setup` first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test lint demo bench browser clean

setup: $(STAMP)

# Re-installs only when the project's dependencies change; a second `make setup` is instant.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

test: lint browser
	$(PY) -m pytest

# The report's browser test needs Chromium and ChromeDriver: installed from Debian's packages where missing
# (as root, or through sudo); elsewhere install them yourself, or the test is skipped.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  command -v apt-get >/dev/null && \
	  { [ "$$(id -u)" = 0 ] && SUDO= || SUDO=sudo; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; } \
	  || echo "make browser: could not install chromium and chromedriver; the report's browser test will be skipped"; }

# The benchmark's embedded default: four problems, engines none/distinv/deepinv, 1 and 2 CPU ranks; resumable.
demo: setup
	$(VENV)/bin/distinv run configs/quick.yml

# Engine timings side by side with deepinv's distributed module (see benchmarks/README.md).
bench: setup
	$(PY) benchmarks/physics_normal_op.py
	$(PY) benchmarks/denoiser_tiling.py --halo-sweep

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
