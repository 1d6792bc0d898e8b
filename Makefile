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

# The suite runs in up to 4 pytest-xdist workers (one per CPU) that steal work from each other at the end; the
# session fixtures are built once for all of them (tests/helpers/shared.py), a module fixture once per worker
# that runs its tests (worksteal ended the suite 2 min sooner than keeping each file on one worker).
test: setup browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra -n auto --maxprocesses 4 --dist worksteal

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

# The serving image (deploy/Containerfile, deploy/README.md): as root, with Debian's podman, buildah,
# mmdebstrap and runc; no Docker daemon and no registry. The base is Debian bookworm (minbase + python3)
# made by mmdebstrap and imported, so nothing is pulled. Podman on these machines needs runc with the
# cgroupfs manager (crun fails: "setrlimit RLIMIT_NOFILE not permitted", then "cgroups in hybrid mode not
# supported"), no default ulimits (CONTAINERS_CONF) and chroot isolation for builds. image-test runs the
# image on exported/ (or a freshly trained tiny repository when exported/ has no lenet) and stops it with
# `podman stop`, as the kubelet does; it is not part of `make test`.
IMAGE      ?= localhost/glassbox-serve:latest
IMAGE_BASE ?= localhost/glassbox-base:bookworm
IMAGE_DIR  := build/image
PODMAN_RUN := podman --runtime runc --cgroup-manager=cgroupfs
PODMAN     := CONTAINERS_CONF=$(CURDIR)/$(IMAGE_DIR)/containers.conf $(PODMAN_RUN)
MMDEBSTRAP := mmdebstrap --variant=minbase --include=python3,python3-venv \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
	--customize-hook='rm -rf "$$1"/var/lib/apt/lists/* "$$1"/var/cache/apt/*' bookworm
# The wheels are fetched on the host (its pip has the host's certificates); no venv needed to build the image.
IMAGE_PIP  := $(if $(wildcard $(BIN)/pip),$(BIN)/pip,$(PY) -m pip)

.PHONY: podman image image-test

podman:
	@if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v runc >/dev/null; then \
	  $(call apt_or_hint,podman buildah mmdebstrap runc,podman/mmdebstrap/runc not found: run 'sudo apt-get install podman buildah mmdebstrap runc' (make image needs them as root)); \
	fi
	@command -v podman >/dev/null && command -v mmdebstrap >/dev/null && command -v runc >/dev/null \
	  || { echo "make image: podman, mmdebstrap and runc are needed (as root); this machine has not got them"; exit 1; }
	@mkdir -p $(IMAGE_DIR) && printf '[containers]\ndefault_ulimits = []\n' > $(IMAGE_DIR)/containers.conf

image: podman
	@start=$$(date +%s); set -e; \
	if ! $(PODMAN) image exists $(IMAGE_BASE); then \
	  echo "base: mmdebstrap bookworm -> $(IMAGE_BASE)"; \
	  $(MMDEBSTRAP) $(IMAGE_DIR)/rootfs.tar >$(IMAGE_DIR)/mmdebstrap.log 2>&1 || { tail -20 $(IMAGE_DIR)/mmdebstrap.log; exit 1; }; \
	  $(PODMAN) import -q $(IMAGE_DIR)/rootfs.tar $(IMAGE_BASE) >/dev/null; rm -f $(IMAGE_DIR)/rootfs.tar; \
	fi; \
	rm -rf $(IMAGE_DIR)/context $(IMAGE_DIR)/src && mkdir -p $(IMAGE_DIR)/context/app $(IMAGE_DIR)/src; \
	$(IMAGE_PIP) download -q -d $(IMAGE_DIR)/wheels --only-binary=:all: -r deploy/requirements.txt; \
	cp -r $(IMAGE_DIR)/wheels deploy/requirements.txt $(IMAGE_DIR)/context/; \
	tar -c --exclude=__pycache__ pyproject.toml README.md glassbox serving | tar -x -C $(IMAGE_DIR)/src; \
	$(IMAGE_PIP) wheel -q --no-deps -w $(IMAGE_DIR)/context/app $(IMAGE_DIR)/src; \
	$(PODMAN) build -q --isolation chroot --build-arg BASE=$(IMAGE_BASE) -f deploy/Containerfile \
	  -t $(IMAGE) $(IMAGE_DIR)/context >/dev/null; \
	echo "$(IMAGE): built in $$(( $$(date +%s) - start )) s, $$($(PODMAN) image inspect --format '{{.Size}}' $(IMAGE) \
	  | awk '{printf "%.0f MB", $$1 / 1e6}')"

image-test: setup podman
	@$(PODMAN) image exists $(IMAGE) || { echo "image-test: no image $(IMAGE): run 'make image' first"; exit 1; }
	CONTAINERS_CONF=$(CURDIR)/$(IMAGE_DIR)/containers.conf GLASSBOX_IMAGE=$(IMAGE) GLASSBOX_PODMAN="$(PODMAN_RUN)" \
	  $(BIN)/python -m pytest -q -ra -s tests/deploy/test_image.py
