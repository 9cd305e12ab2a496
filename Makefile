# Two entry points do all set-up on a fresh machine (see README):
#   make generate   -> installs into .venv, then runs `dyllm generate` on the built-in default model
#   make test       -> installs into .venv, then lint, tests and a strict docs build
# torch is installed first as the CPU build (TORCH_SPEC), so the package's loose `torch`
# requirement is already met and pip pulls no CUDA wheels; override TORCH_SPEC for a GPU build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PROMPT ?= sort 3141592653589793 =
STAMP := $(VENV)/.installed

.PHONY: install generate test test-slow test-gpu bench bench-long bench-micro bench-policies lint docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,docs,plots,eval,serve]"
	touch $(STAMP)

install: $(STAMP)

generate: install
	$(BIN)/dyllm generate "$(PROMPT)"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: install
	$(BIN)/mkdocs build --strict --quiet --site-dir /tmp/dyllm-site

test: lint docs
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

test-gpu: install
	$(BIN)/python -m pytest -q -m gpu

# accuracy against throughput for every policy on a reference model (MODEL=dream-ref for Dream)
MODEL ?= llada-ref
bench: install
	$(BIN)/dyllm bench --model $(MODEL)

# the DyLLM paper's regime: llada-long's 128-token answers, every strategy at nu = 1, 2, 4 and
# threshold decoding, blocks of 8 and 32, batches of 16 (16 problems per task, one timed pass);
# writes bench/results/llada-long-cpu.{json,png} (about 25 minutes on one core;
# docs/benchmarks.md)
bench-long: install
	$(BIN)/dyllm bench --model llada-long --block-length 8 32 --problems-per-task 16 \
		--repeats 1 --out-dir bench/results

# pytest-benchmark timings of the sparse step's parts (kept out of `make test`)
bench-micro: install
	$(BIN)/python -m pytest bench/micro --benchmark-enable -q -p no:cacheprovider \
		--benchmark-columns=median,iqr,rounds --benchmark-sort=name

# every policy's sparse step against its FLOP-ratio limit, results to bench/results/ (kept out of
# `make test`; compare a change's numbers with the committed file)
bench-policies: install
	$(BIN)/python -m pytest bench/policy_steps --benchmark-enable -q -p no:cacheprovider \
		--benchmark-columns=median,iqr,rounds --benchmark-sort=name \
		--benchmark-json=bench/results/policy_steps_cpu.json

clean:
	rm -rf $(VENV) site .pytest_cache .ruff_cache
