# The two commands of the README: `make demo` and `make test`. Both build .venv themselves.
# torch is installed first and pinned (a CPU wheel of exactly 2.13.0 is cached on our machines;
# an unpinned torch would pull gigabytes of CUDA packages).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
DEMO_OUT ?= demo_out
LINTED := soe studies tests bench data_prep train.py demo.py  # ruff (pyproject.toml): lint and format, checked by make test

.PHONY: venv test test-all demo merging bench gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c constraints.txt -e ".[embed,hf,plot,merge,serve,dev]"
	touch $@

venv: $(STAMP)

# Lint and format check (ruff: seconds), then the fast suite (~1 min on 2 CPU cores); slow end-to-end tests are
# marked and run by test-all. Fix what ruff reports with: .venv/bin/ruff format $(LINTED); .venv/bin/ruff check --fix $(LINTED)
# One intra-op thread: the test models are tiny, and oversubscribed threads slow them 10x on a busy machine.
test: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q

test-all: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -m "slow or not slow"

demo: $(STAMP)
	$(PY) demo.py --out $(DEMO_OUT)

# The merging experiment (experiments/merging.yaml) on the 9-domain corpus's soup and generic model (configs/demo-cpu.yaml
# and dense-demo-cpu.yaml, trained into merging_out/runs on first use: the demo now trains the small regime instead);
# ~15 min of training, then ~40 min on 2 CPU cores.
merging: $(STAMP)
	$(PY) -m data_prep.prepare --config data_prep/configs/demo.yaml --out data/demo
	$(PY) -m studies.merging --config experiments/merging.yaml --out merging_out --runs merging_out/runs

bench: $(STAMP)
	$(PY) -m bench.run_all

# The prepared check for the first GPU (bench/gpu_check.py, issue 26): ≤ 8 min on one H100/H200, every part in its own
# process; writes gpu_check.json and gpu_check.md into GPU_CHECK_OUT. No $(STAMP): a GPU machine that cannot reach a
# package registry runs it with its own python3 (torch, lightning, pyyaml, tokenizers) when there is no .venv.
# Smoke on CPU (tiny sizes, every part and branch): make gpu-check ARGS="--smoke --device cpu"
GPU_CHECK_OUT ?= bench/out/gpu_check
GPU_CHECK_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_CHECK_PY) -m bench.gpu_check --device cuda --out $(GPU_CHECK_OUT) $(ARGS)

clean:
	rm -rf $(VENV) runs $(DEMO_OUT) merging_out .pytest_cache
