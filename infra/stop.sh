#!/usr/bin/env bash
# `make stop`: end what infra/serve.sh started (each in its own session: the whole group goes).
set -uo pipefail
cd "$(dirname "$0")/.."
SERVE_DIR=${SERVE_DIR:-$PWD/.serve}
for name in worker mlflow prefect-server; do
  pidfile="$SERVE_DIR/$name.pid"
  [[ -f "$pidfile" ]] || continue
  pid=$(cat "$pidfile")
  kill -TERM -- "-$pid" 2>/dev/null && echo "$name: stopped (pid $pid)"
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null
  rm -f "$pidfile"
done
