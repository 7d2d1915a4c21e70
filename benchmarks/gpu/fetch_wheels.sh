#!/usr/bin/env bash
# Download the wheels the H200 machine lacks into benchmarks/gpu/.whl (git-ignored by
# benchmarks/gpu/.gitignore), for its python3 (CPython 3.12, x86-64). Run here, where pip reaches
# the registry; then name benchmarks/gpu/.whl in the device call's `carry` (README.md). About 14 MB.
#
# The device image already holds torch 2.11 (CUDA 13), accelerate 1.15, huggingface-hub,
# tokenizers, safetensors, pyarrow, pandas, xxhash, fsspec, numpy (/work/.library/device/KINDS.md),
# so only TRL, datasets and datasets' two missing needs travel, plus transformers at the project's
# pin (the device has 5.17; run.sh falls back to that one if 5.19 will not import there).
# EXTRA="pyarrow==25.0.1" adds wheels (that one is 50 MB: the whole call must stay under 64 MiB).
#   PYTHON=.venv/bin/python bash benchmarks/gpu/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
rm -rf .whl && mkdir -p .whl
# shellcheck disable=SC2086  # EXTRA is a list of requirement specifiers
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl \
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 transformers==5.19.0 ${EXTRA:-}
ls -l .whl
kib=$(du -sk .whl | cut -f1)
echo "benchmarks/gpu/.whl: $((kib / 1024)) MiB (the working tree that travels must stay under 64 MiB)"
(( kib < 60 * 1024 )) || echo "WARNING: over 60 MiB of wheels; drop transformers (the device has 5.17) to make room"
