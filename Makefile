# compsearch developer commands. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install test test-all lint demo bench clean

# Reinstall only when pyproject.toml changes (the stamp is older than it).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all,test]"
	touch $(STAMP)

install: $(STAMP)

# The default suite (what CI runs): everything but tests marked slow.
test: install
	$(BIN)/python -m pytest -q -m "not slow"

test-all: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check compsearch spaces evaluators search studies tests benchmarks
	$(BIN)/mypy compsearch spaces evaluators search studies

demo: install
	$(BIN)/compsearch run studies/quickstart.toml --out runs/quickstart
	$(BIN)/compsearch report runs/quickstart
	@echo "Report: $(CURDIR)/runs/quickstart/report.html"

bench: install
	$(BIN)/python -m pip install --quiet -e ".[all,bench]"
	$(BIN)/python benchmarks/evaluator.py
	$(BIN)/python benchmarks/strategies.py
	$(BIN)/python benchmarks/scale.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
