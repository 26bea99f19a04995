# distinv: `make demo` and `make test` work on a fresh machine (they run `make setup` first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-deepinv test-slurm lint demo bench browser gpu-check gpu-wheels clean

setup: $(STAMP)

# Re-installs only when the project's dependencies change; a second `make setup` is instant.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench,radio]'
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

test: lint browser
	$(PY) -m pytest

# deepinv's own distributed test suite (the file deepinv installs) against distinv, through the import alias
# distinv.deepinv_alias; the cases it leaves out are in the README's migration notes. About 6 minutes on 2 cores.
test-deepinv: setup
	$(PY) tests/deepinv_suite/run.py

# A real one-node SLURM cluster on this machine (slurm-wlm and munge installed where missing, as root or through
# sudo): a small config through `distinv run --slurm --wait` and `--srun` inside salloc; the daemons it started are
# stopped after. About 1 minute.
test-slurm: setup
	bash .ci/slurm_check.sh

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

# GPU figures in one command (benchmarks/README.md, "GPU check"): on the GPU machine, with its own Python and PyTorch
# and the wheels `make gpu-wheels` gathers here.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) -m torch.distributed.run --standalone --nproc-per-node 1 benchmarks/gpu_check.py

# Wheels for a GPU machine without a package index: distinv and what the check needs besides PyTorch, for its
# Python (GPU_PY_VERSION) and platform, and GPU_EXTRA_WHEELS (e.g. astra-toolbox); `pip install --no-index --no-deps
# gpu-wheels/*.whl` there.
GPU_PY_VERSION ?= 3.11
GPU_EXTRA_WHEELS ?=
gpu-wheels: setup
	rm -rf gpu-wheels
	$(PY) -m pip wheel --quiet --no-deps -w gpu-wheels .
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: -d gpu-wheels \
	  --python-version $(GPU_PY_VERSION) --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
	  --platform manylinux_2_17_x86_64 \
	  deepinv pyyaml numpy matplotlib tqdm torchmetrics lightning-utilities einops requests h5py natsort \
	  contourpy cycler fonttools kiwisolver packaging pillow pyparsing python-dateutil six charset-normalizer \
	  idna urllib3 certifi typing-extensions $(GPU_EXTRA_WHEELS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
