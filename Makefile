# Every entry point of the project. `make run` and `make test` set everything up themselves:
# a bootstrap copy of uv, the locked virtualenv, and the generated protobuf code.
SHELL := /bin/bash
PYTHON ?= python3
UV := .tools/bin/uv
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
GEN := build/gen
PROTOS := $(shell find protos -name '*.proto' | sort)
export PATH := $(CURDIR)/$(BIN):$(PATH)
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)

.PHONY: run test faults lint fmt typecheck proto docs third-party proto-lint proto-breaking bench setup system-tools bench-tools clean

## run: start the whole platform locally (embedded PostgreSQL and NATS, all services, a demo tenant)
run: setup
	$(PY) -m trellis_devstack run

## test: lint, type-check, proto checks and the whole test suite against real PostgreSQL and NATS
test: setup third-party system-tools lint typecheck proto-lint
	$(PY) -m pytest -q

## faults: the fault suite's long form (WRITES=10000 at RATE=60 a second by default), printing its
## table; `make test` runs the short form (200 writes at 10 a second)
WRITES ?= 10000
RATE ?= 60
faults: setup
	TRELLIS_FAULT_WRITES=$(WRITES) TRELLIS_FAULT_RATE=$(RATE) $(PY) -m pytest tests/faults -q -s

# Command-line tools from Debian packages: installed when missing and we may (root), otherwise
# named in a clear message. promtool checks metrics in the tests; hey drives the benchmarks.
define debian_tool
	@command -v $(1) >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null; \
	  else echo "$(1) is missing: install it (Debian/Ubuntu: sudo apt-get install $(2))"; exit 1; fi; }
endef

# The official AsyncAPI 3.0 JSON Schema, for validating our catalogue in tests: no package
# installs it, one source distribution carries it; downloaded, never committed.
THIRD_PARTY := build/third_party
ASYNCAPI_SDIST := asyncapi-python-parser-jonaslagoni==0.5.0
third-party: $(THIRD_PARTY)/.stamp
$(THIRD_PARTY)/.stamp: | $(UV)
	.tools/bin/pip download --quiet --no-deps --no-binary :all: --dest $(THIRD_PARTY) $(ASYNCAPI_SDIST)
	touch $@

system-tools:
	$(call debian_tool,promtool,prometheus)

bench-tools:
	$(call debian_tool,hey,hey)

setup: $(VENV)/.synced $(GEN)/.stamp

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==0.13.9

$(VENV)/.synced: $(UV) uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)
	$(UV) sync --frozen --all-packages --python $(PYTHON)
	touch $@

# Generated code goes to build/gen (not committed); a .pth file puts it on the venv's path so
# imports are package-qualified: `from crm.contacts.v1 import contacts_pb2`. No __init__.py
# files: `crm` is a namespace package, so code generated elsewhere (a test's throwaway
# service) can add its own crm.<domain> beside ours.
$(GEN)/.stamp: $(VENV)/.synced $(PROTOS)
	rm -rf $(GEN) && mkdir -p $(GEN)/crm
	$(PY) -m grpc_tools.protoc -Iprotos -Ithird_party/googleapis \
	  --python_out=$(GEN) --grpc_python_out=$(GEN) --mypy_out=$(GEN) --mypy_grpc_out=$(GEN) \
	  --descriptor_set_out=$(GEN)/crm/descriptors.binpb --include_source_info --include_imports \
	  $(PROTOS)
	echo "$(CURDIR)/$(GEN)" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/trellis_generated.pth
	touch $@

proto: $(GEN)/.stamp

## docs: rewrite the reference tables of the READMEs from the protos and the declaration
docs: setup
	$(PY) -m trellis_devstack docs

proto-lint: $(VENV)/.synced
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code

## proto-breaking: compare the protos with the previous commit (AGAINST=.git#ref=... to change)
AGAINST ?= .git\#ref=HEAD~1
proto-breaking: $(VENV)/.synced
	$(BIN)/buf breaking --against '$(AGAINST)'

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/buf format -w

typecheck: setup
	$(BIN)/mypy libs services tests bench

## bench: throughput, latency and CPU per request beside their floors and Envoy (not part of `make test`)
# The bench group (Envoy, py-spy) is installed here only, so `make test` does not carry it.
BENCH_ARGS ?=
bench: setup bench-tools
	$(UV) sync --frozen --all-packages --group bench
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .tools build
