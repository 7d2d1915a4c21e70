#!/usr/bin/env bash
# The one command for the device tool: `bash benchmarks/gpu/run.sh` (benchmarks/gpu/README.md).
#
# Installs the carried wheels (benchmarks/gpu/.whl, from fetch_wheels.sh) into a private folder on
# PYTHONPATH, then runs bench.py twice, SFT then GRPO, each in its own process under `timeout`,
# both merging into $OUT/gpu_bench.json; a section cut short still leaves its partial figures
# there (bench.py catches SIGTERM). The whole script ends within BENCH_TOTAL_S (default 290 s)
# plus a few seconds. Extra arguments go to both bench.py runs (e.g. --sft-batch 16).
#
# Files under $OUT: gpu_bench.json, gpu_bench.log (this script's whole output), env.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore::UserWarning
PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/.cache/gpu-bench}"
TOTAL="${BENCH_TOTAL_S:-290}"
SFT_S="${BENCH_SFT_S:-90}"
GRPO_S="${BENCH_GRPO_S:-170}"
WHL=benchmarks/gpu/.whl
SITE="${TMPDIR:-/tmp}/gpu-bench-site"
JSON="$OUT/gpu_bench.json"
mkdir -p "$OUT" && rm -f "$JSON"
exec > >(tee -a "$OUT/gpu_bench.log") 2>&1

left() { echo $((TOTAL - SECONDS)); }
cap() { local want=$1 have; have=$(( $(left) - ${2:-0} )); (( have < want )) && want=$have; echo $(( want > 5 ? want : 5 )); }

echo "== environment ($(date -u +%FT%TZ))"
{
  timeout 15 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv 2>&1 || echo "nvidia-smi: unavailable"
  echo "python: $(command -v "$PY") $("$PY" -V 2>&1)"
  timeout 30 "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|trl|datasets|accelerate|pyarrow|tokenizers|huggingface.hub|safetensors|regex|fsspec|numpy|dill|multiprocess) '
} | tee "$OUT/env.txt"

if compgen -G "$WHL/*.whl" >/dev/null; then
  echo "== installing carried wheels: $(cd "$WHL" && ls ./*.whl | tr '\n' ' ')"
  rm -rf "$SITE"
  if timeout "$(cap 60)" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$WHL"/*.whl; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    if ! timeout "$(cap 60)" "$PY" -c "import transformers, trl, datasets"; then
      # The carried transformers checks its needs' versions at import (regex, tokenizers, ...):
      # fall back to the machine's own and say so.
      echo "== carried transformers did not import; using the machine's own"
      rm -rf "$SITE"/transformers "$SITE"/transformers-*.dist-info
      timeout "$(cap 60)" "$PY" -c "import transformers, trl, datasets" || echo "== imports still fail: GRPO will report it"
    fi
  else
    echo "== wheel install failed; running with what the machine has"
  fi
else
  echo "== no carried wheels in $WHL (fetch_wheels.sh): GRPO needs trl and datasets on the machine"
fi

status=0
t=$(cap "$SFT_S" 40)
echo "== SFT (timeout ${t}s, ${SECONDS}s elapsed)"
timeout -k 10 "$t" "$PY" benchmarks/gpu/bench.py --only sft --out "$JSON" --budget-s "$((t - 10))" "$@" || status=1
t=$(cap "$GRPO_S" 10)
echo "== GRPO (timeout ${t}s, ${SECONDS}s elapsed)"
timeout -k 10 "$t" "$PY" benchmarks/gpu/bench.py --only grpo --out "$JSON" --budget-s "$((t - 20))" "$@" || status=1

echo "== summary (${SECONDS}s elapsed; full figures in $JSON)"
"$PY" benchmarks/gpu/bench.py --summary --out "$JSON"
exit $status
