#!/usr/bin/env bash
# The main job on the embedded defaults: builds, starts the IQAir simulator (or uses the real API
# when IQAIR_API_KEY is set), the generic JSON API simulator (json-sim, for the README's HTTP_JSON
# examples), data-streams and one worker, creates a demo stream, and prints where to look. Ctrl-C
# stops everything it started.
#
#   scripts/run-dev.sh                    # simulator, SQLite under ./data, objects under ./data/objects
#   IQAIR_API_KEY=... scripts/run-dev.sh  # the real api.airvisual.com
#   PROFILE=release scripts/run-dev.sh    # optimised build
#   RUN_DEV_BIN_DIR=target/debug scripts/run-dev.sh   # no build: the binaries in that folder
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${PROFILE:-dev}
HTTP_ADDR=${DATA_STREAMS_HTTP_ADDR:-127.0.0.1:8080}
WORKER_ADDR=${DATA_STREAMS_WORKER_ADDR:-127.0.0.1:7070}
SIM_ADDR=${IQAIR_SIM_ADDR:-127.0.0.1:8090}
JSON_SIM_ADDR=${JSON_SIM_ADDR:-127.0.0.1:8091}
export DATA_STREAMS_HTTP_ADDR=$HTTP_ADDR DATA_STREAMS_WORKER_ADDR=$WORKER_ADDR
mkdir -p data/logs

if [[ -n "${RUN_DEV_BIN_DIR:-}" ]]; then
  # Binaries built elsewhere (the test of this script runs it on the test build's binaries).
  bindir=$RUN_DEV_BIN_DIR
else
  echo "==> building ($PROFILE)"
  cargo build --profile "$PROFILE" --bins
  # Ask cargo where it builds: CARGO_TARGET_DIR, a config file or the default `target/`.
  target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  bindir=${target_dir:-target}/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")
fi
[[ -x "$bindir/data-streams" ]] || { echo "!! no data-streams binary in $bindir after the build"; exit 1; }

pids=()
stop_all() {
  trap - INT TERM EXIT
  if ((${#pids[@]})); then
    echo
    echo "==> stopping ${#pids[@]} processes"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 50); do
      alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      ((alive)) || break
      sleep 0.2
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
  fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

start() { # name, then the command; logs to data/logs/<name>.log
  local name=$1; shift
  "$@" >"data/logs/$name.log" 2>&1 &
  pids+=($!)
  echo "    $name: pid $! (log: data/logs/$name.log)"
}

wait_for() { # url, name, pid
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { echo "!! $2 exited; its log:"; tail -20 "data/logs/$2.log"; exit 1; }
    sleep 0.2
  done
  echo "!! $2 did not answer on $1 within 30 s; its log:"; tail -20 "data/logs/$2.log"; exit 1
}

if [[ -n "${IQAIR_API_KEY:-}" ]]; then
  ENDPOINT=${IQAIR_ENDPOINT:-http://api.airvisual.com/v2/nearest_city}
  KEY=$IQAIR_API_KEY
  INTERVAL=${DEMO_INTERVAL_MS:-60000}
  echo "==> using the real IQAir API at $ENDPOINT"
else
  echo "==> IQAIR_API_KEY is not set: using the local IQAir simulator on $SIM_ADDR (key 'demo')"
  start iqair-sim env IQAIR_SIM_ADDR="$SIM_ADDR" IQAIR_SIM_KEYS=demo "$bindir/iqair-sim"
  wait_for "http://$SIM_ADDR/v2/countries?key=demo" iqair-sim "${pids[-1]}"
  ENDPOINT="http://$SIM_ADDR/v2/nearest_city"
  KEY=demo
  # 15 s stays inside the Community plan's 5 calls a minute that the simulator enforces.
  INTERVAL=${DEMO_INTERVAL_MS:-15000}
fi

echo "==> starting json-sim on $JSON_SIM_ADDR (a paginated JSON API with auth and report jobs; secret 'sim-secret')"
start json-sim env JSON_SIM_ADDR="$JSON_SIM_ADDR" "$bindir/json-sim"
wait_for "http://$JSON_SIM_ADDR/none/items?until=2026-01-01" json-sim "${pids[-1]}"

echo "==> starting data-streams and a worker"
start data-streams "$bindir/data-streams"
wait_for "http://$HTTP_ADDR/healthz" data-streams "${pids[-1]}"
start worker env WORKER_ID="${WORKER_ID:-dev-worker}" "$bindir/worker"

auth=()
[[ -n "${DATA_STREAMS_API_TOKEN:-}" ]] && auth=(-H "Authorization: Bearer $DATA_STREAMS_API_TOKEN")
# Reuse the demo stream of an earlier run (state lives in ./data), else create one.
existing=$(curl -fsS "${auth[@]}" "http://$HTTP_ADDR/streams" | grep -o '"id":"[^"]*"' | head -1 | cut -d'"' -f4 || true)
if [[ -n "$existing" ]]; then
  id=$existing
  curl -fsS "${auth[@]}" -X POST "http://$HTTP_ADDR/streams/$id/start" >/dev/null
  echo "==> reusing stream $id from ./data (rm -rf data for a clean start)"
else
  stream=$(curl -fsS "${auth[@]}" -X POST "http://$HTTP_ADDR/streams" -H 'Content-Type: application/json' -d @- <<JSON
{"adapter": "IQAIR_DAILY", "endpoint": "$ENDPOINT", "secret_key": "$KEY",
 "interval": $INTERVAL, "bucket_name": "results", "params": {"lat": 52.52, "lon": 13.40}}
JSON
)
  id=$(grep -o '"id":"[^"]*"' <<<"$stream" | head -1 | cut -d'"' -f4)
fi
a=${auth[*]:+-H 'Authorization: Bearer \$DATA_STREAMS_API_TOKEN' }
cat <<EOF2

==> running. Demo stream $id fetches Berlin (new streams: every $((INTERVAL / 1000)) s).

    console        http://$HTTP_ADDR/   (the stream: http://$HTTP_ADDR/#/streams/$id)
    json-sim       http://$JSON_SIM_ADDR   (the README's HTTP_JSON examples call it; routes: docs/json-sim.md)
    API docs       http://$HTTP_ADDR/docs   (OpenAPI: /openapi.json)
    API            http://$HTTP_ADDR   (health: /healthz, readiness: /readyz, metrics: /metrics)
    raw objects    ./data/objects/results/IQAIR_DAILY/stream_id=$id/dt=YYYY-MM-DD/<result_id>.json
                   (DuckDB: the README's "The warehouse" queries, run from this folder)
    database       ./data/data-streams.db (SQLite)
    logs           ./data/logs/

    curl -s ${a}http://$HTTP_ADDR/streams/$id
    curl -s ${a}http://$HTTP_ADDR/streams/$id/results
    RID=\$(curl -s ${a}http://$HTTP_ADDR/streams/$id/results | grep -o '"id":"[^"]*"' | head -1 | cut -d'"' -f4)
    curl -s ${a}http://$HTTP_ADDR/results/\$RID/raw
    curl -s ${a}http://$HTTP_ADDR/streams/$id/measurements
    curl -s ${a}http://$HTTP_ADDR/workers
    curl -s ${a}-X POST http://$HTTP_ADDR/streams/$id/stop

Ctrl-C stops everything.
EOF2
wait
