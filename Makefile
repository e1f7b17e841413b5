# slimforge: `make demo` and `make test` do all set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-slow install clean browser

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, from the local CPU wheel, so nothing pulls a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

# the headline: the auto-optimizer for this CPU on the bundled MiniLM and sentences, about 5 minutes on 2 cores
# (the fixed recipe: $(BIN)/slimforge optimize --recipe RECIPE.yaml)
demo: $(STAMP)
	$(BIN)/slimforge optimize --target cpu --min-cosine 0.995 --time-budget 5m

# the web page's end-to-end test drives Debian's Chromium; installed here when missing and possible (else skipped)
browser:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1) || \
	  echo "note: no Chromium; the browser test will be skipped"

# the layers (import-linter contracts in pyproject.toml) first: a broken layer fails the build in seconds
test: $(STAMP) browser
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q --durations=25

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) slimforge-out
