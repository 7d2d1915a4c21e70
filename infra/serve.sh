#!/usr/bin/env bash
# `make serve`: Prefect server, MLflow server, the `cpu` process pool, the deployments and a worker,
# all on this machine (127.0.0.1), state and logs under $SERVE_DIR (default .serve/).
# Then: `source .serve/env && prefect deployment run 'post-training/default'`; `make stop` ends them.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVE_DIR=${SERVE_DIR:-$PWD/.serve}
PREFECT_PORT=${PREFECT_PORT:-4200}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
VENV=${VENV:-$PWD/.venv}
mkdir -p "$SERVE_DIR"

cat > "$SERVE_DIR/env" <<ENV
export PREFECT_HOME=$SERVE_DIR/prefect
export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export POSTTRAIN_HOME=$PWD
export POSTTRAIN_ARTIFACTS=${POSTTRAIN_ARTIFACTS:-$PWD/artifacts}
export OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false
export PATH=$VENV/bin:\$PATH
ENV
# shellcheck disable=SC1091
source "$SERVE_DIR/env"

start() {  # name, command...: a new session each, so `make stop` ends the process and its children
  local name=$1; shift
  if [[ -f "$SERVE_DIR/$name.pid" ]] && kill -0 "$(cat "$SERVE_DIR/$name.pid")" 2>/dev/null; then
    echo "$name: already running (pid $(cat "$SERVE_DIR/$name.pid"))"; return
  fi
  setsid nohup "$@" >"$SERVE_DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$SERVE_DIR/$name.pid"
}

wait_for() {  # url, name
  "$VENV/bin/python" - "$1" "$2" "$SERVE_DIR" <<'PY'
import sys, time, urllib.request
url, name, folder = sys.argv[1:]
deadline = time.monotonic() + 180
while True:
    try:
        urllib.request.urlopen(url, timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"{name} did not answer {url} within 180 s: see {folder}/{name}.log")
        time.sleep(1)
print(f"{name}: up ({url})")
PY
}

start prefect-server prefect server start --host 127.0.0.1 --port "$PREFECT_PORT"
start mlflow mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" \
  --backend-store-uri "sqlite:///$SERVE_DIR/mlflow.db" --artifacts-destination "$SERVE_DIR/mlartifacts" --serve-artifacts
wait_for "$PREFECT_API_URL/health" prefect-server
wait_for "$MLFLOW_TRACKING_URI/health" mlflow

if ! prefect work-pool inspect cpu >/dev/null 2>&1; then
  prefect work-pool create cpu --type process --base-job-template infra/pools/cpu.json
fi
# The GPU deployments (stage/gpu-k8s, stage/gpu-docker) need their pools: see infra/README.md.
prefect --no-prompt deploy --name post-training/default --name post-training/nightly --name evaluate/default \
  --name stage/cpu
if [[ -n "${POSTTRAIN_ALERT_WEBHOOK:-}" ]]; then
  python infra/alerts.py ${POSTTRAIN_ALERTS_ARGS:-}
fi
start worker prefect worker start --pool cpu --name "cpu-$(hostname)"

cat <<MSG
Prefect UI  http://127.0.0.1:$PREFECT_PORT
MLflow UI   $MLFLOW_TRACKING_URI
Run:        source $SERVE_DIR/env && prefect deployment run 'post-training/default'
Stop:       make stop
MSG
