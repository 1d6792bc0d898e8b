# Two commands a user needs (see README): `make demo` and `make test`.
# Both create or reuse .venv; a stamp file makes the second run take seconds.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.glassbox-installed
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PROFILE ?= quick
OUT     ?= runs/$(PROFILE)

.PHONY: setup data browser demo test train-full bench clean mutation coverage

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

setup: $(STAMP) data

# $(call apt_or_hint,PACKAGE,HINT): install a Debian package when apt can be used, else print HINT.
apt_or_hint = if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq $(1)) >/dev/null 2>&1; \
	else echo "$(2)"; fi

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package when apt can be used.
data:
	@if [ ! -f $(FMNIST) ] && [ -z "$$GLASSBOX_DATA_DIR" ]; then \
	  $(call apt_or_hint,dataset-fashion-mnist,Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist' or set GLASSBOX_DATA_DIR); \
	fi

# The report test renders the HTML report in headless Chromium (Debian's chromium package).
browser:
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
	  $(call apt_or_hint,chromium,Chromium not found: run 'sudo apt-get install chromium' (the HTML report test needs it)); \
	fi

demo: setup
	scripts/demo.sh

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

# The suite's strength, measured (slow: not part of `make test`). mutation: mutmut on the modules that
# guard correctness against their fast unit tests ([tool.mutmut] in pyproject.toml), killed/total per
# module; MUTATION_ARGS="--show" prints every surviving mutant. coverage: the whole suite under
# coverage (subprocess servers and CLIs included), line and branch % per package, then every
# uncovered branch of serving/ and training/export/.
mutation: setup
	test -x $(BIN)/mutmut || $(BIN)/pip install -q --disable-pip-version-check -e ".[mutation]"
	$(BIN)/python scripts/mutation.py $(MUTATION_ARGS)

coverage: setup browser
	rm -f .coverage .coverage.*
	COVERAGE_FILE=$(CURDIR)/.coverage $(BIN)/python -m pytest -q -ra --cov --cov-report= ; status=$$?; \
	  $(BIN)/python scripts/coverage_report.py --branches serving training/export; exit $$status

train-full: setup
	GLASSBOX_DATA_DIR=$${GLASSBOX_DATA_DIR:-$$(test -d ../shared/data && echo ../shared/data)} \
	  $(BIN)/train-all --profile full --out runs/full

bench: setup
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf runs reports build *.egg-info mutants .coverage .coverage.* htmlcov
