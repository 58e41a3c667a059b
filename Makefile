# Two entry points: `make test` (the test suite) and `make run` (the main job).
# Both create .venv and install what they need; torch is pinned to the CPU wheel first
# so that the package's bare `torch` requirement never pulls a CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0

.PHONY: venv test run bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q

# The main job: train the default config (LSSL on sequential MNIST, sized for 2 CPU cores); the
# run then scores its best checkpoint on the full 10k test set and writes runs/lssl-smnist/report.md.
# A finished run is kept: delete runs/lssl-smnist to train again.
run: venv
	$(PY) -m lssl train configs/lssl-smnist.toml

bench: venv
	$(PY) benchmarks/kernels.py --out benchmarks/kernels.md
	$(PY) benchmarks/layers.py --out benchmarks/layers.md
	$(PY) benchmarks/liquid_loops.py --out benchmarks/liquid_loops.md
	$(PY) benchmarks/streaming.py --out benchmarks/streaming.md

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
