#!/usr/bin/env bash
# Chaos run: "nothing lost, nobody let in". Starts iqair-sim, the backends, data-streams (one
# process, or --replicas N on PostgreSQL) and two workers, creates ~10 streams at 1-2 s
# intervals, then for the duration rotates simulator faults (never the auth faults, which would
# legitimately stop streams), SIGKILLs and restarts workers and the supervisor (with replicas:
# the current leader) at random moments, restarts the database once (throwaway cluster only) and
# the object store once (production backend only). Then it lets everything settle and checks with
# GET /audit that every object has exactly one reference and every stream runs again, and with an
# audit pass (POST /reconciler/audit) that the watermarked passes left nothing behind.
#
#   scripts/chaos.sh [--duration SECS] [--backend embedded|production] [--replicas N]
#
#   --duration   seconds of chaos (default 300, or CHAOS_DURATION)
#   --backend    production: PostgreSQL (a throwaway cluster from scripts/pg.sh when initdb is
#                there, so it can be restarted; else the server pg.sh finds) with a fresh
#                database, and the s3-test-server binary; embedded: SQLite + a folder. Default:
#                production when scripts/pg.sh finds PostgreSQL, else embedded.
#   --replicas   supervisor processes on the one database (default 1, or CHAOS_REPLICAS); more
#                than one needs the production backend. Each supervisor kill is then a SIGKILL
#                of the leader (>= 10 at 300 s, at least 3), restarted on its ports as a
#                follower; workers list every replica's address.
#
# The last line printed is
#   objects=N references=N orphans=0 dangling=0 duplicates=0 streams_running=M/M \
#     longest_result_gap_ms=G longest_leaderless_ms=L
# (G: the longest time any stream went without a stored result during the chaos, faults and
# worker kills included; L: the longest time from a leader kill until another replica led, 0
# with one replica, whose kills are restarts) and the exit status is non-zero when orphans, dangling or duplicates are not 0, objects differ
# from references, or not every stream runs. Logs live under a temp folder printed at the start,
# kept on failure. Every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${CHAOS_DURATION:-300}
BACKEND=${CHAOS_BACKEND:-}
REPLICAS=${CHAOS_REPLICAS:-1}
while (($#)); do
  case $1 in
    --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
    --duration=*) DURATION=${1#*=}; shift ;;
    --backend) BACKEND=${2:?--backend needs embedded or production}; shift 2 ;;
    --backend=*) BACKEND=${1#*=}; shift ;;
    --replicas) REPLICAS=${2:?--replicas needs a count}; shift 2 ;;
    --replicas=*) REPLICAS=${1#*=}; shift ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "chaos: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 10 ]] || { echo "chaos: --duration must be >= 10 s" >&2; exit 2; }
[[ -z $BACKEND || $BACKEND == embedded || $BACKEND == production ]] \
  || { echo "chaos: --backend is embedded or production" >&2; exit 2; }
[[ $REPLICAS =~ ^[1-9]$ ]] || { echo "chaos: --replicas is 1 to 9" >&2; exit 2; }
((REPLICAS == 1)) || [[ $BACKEND != embedded ]] \
  || { echo "chaos: --replicas $REPLICAS needs the production backend (SQLite takes one supervisor)" >&2; exit 2; }

LOG=$(mktemp -d -t ds-chaos.XXXXXX)
echo "chaos: logs under $LOG"

ts() { date -u +%H:%M:%S; }
say() { echo "chaos $(ts): $*"; }
now_iso() { date -u +%Y-%m-%dT%H:%M:%S.%3NZ; }

API_TOKEN=chaos-api-token
WORKER_TOKEN=chaos-worker-token
IQAIR_KEYS=(chaos-key-a chaos-key-b)

declare -A PID=()
# The supervisor processes' names (data-streams, or data-streams-1..N), and each one's addresses.
SUPERVISORS=()
declare -A SUP_HTTP=() SUP_WORKERS=()
FAULT_LOOP=
PG_DIR=
PG_BINDIR=
PG_RUN=()
PG_URL=
DB_NAME=
PASSED=0
CLEANED=0

stop_pid() { # pid, then wait for it
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  ((CLEANED)) && return 0
  CLEANED=1
  if [[ -n $FAULT_LOOP ]]; then kill "$FAULT_LOOP" 2>/dev/null || true; wait "$FAULT_LOOP" 2>/dev/null || true; fi
  local name
  for name in worker-1 worker-2 "${SUPERVISORS[@]}" iqair-sim s3-test-server; do
    [[ -n ${PID[$name]:-} ]] && stop_pid "${PID[$name]}"
  done
  if [[ -n $DB_NAME && -z $PG_DIR && -n $PG_URL ]]; then
    psql "$PG_URL" -Atqc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  if [[ -n $PG_DIR && -d $PG_DIR/data ]]; then
    "${PG_RUN[@]}" "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
  if ((PASSED)); then
    rm -rf "$LOG"
  else
    echo "chaos: logs kept under $LOG"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "chaos: FAILED: $*" >&2; exit 1; }

start() { # name, then the command (env included); appends to $LOG/<name>.log
  local name=$1; shift
  echo "---- start $(now_iso)" >>"$LOG/$name.log"
  "$@" >>"$LOG/$name.log" 2>&1 &
  PID[$name]=$!
}

kill9() { # name
  local pid=${PID[$1]}
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "---- SIGKILL $(now_iso)" >>"$LOG/$1.log"
}

wait_line() { # name, pattern, seconds: the last matching line of the log (since the last start)
  local name=$1 pattern=$2 line
  for _ in $(seq 1 $(($3 * 5))); do
    line=$(sed -n '/^---- start/h; /^---- start/!H; ${x;p}' "$LOG/$name.log" | grep -a -- "$pattern" | tail -1 || true)
    [[ -n $line ]] && { echo "$line"; return 0; }
    kill -0 "${PID[$name]}" 2>/dev/null || { tail -20 "$LOG/$name.log" >&2; fail "$name exited"; }
    sleep 0.2
  done
  tail -20 "$LOG/$name.log" >&2
  fail "$name did not print '$pattern' within $3 s"
}

api() { # path [curl args...]: the body from the first supervisor that answers, or nothing
  local path=$1 name body; shift
  for name in "${SUPERVISORS[@]}"; do
    [[ -n ${SUP_HTTP[$name]:-} ]] || continue
    body=$(curl -sS --fail-with-body --max-time 30 -H "Authorization: Bearer $API_TOKEN" "$@" \
      "http://${SUP_HTTP[$name]}$path" 2>/dev/null) && { echo "$body"; return 0; }
    # A 503 from a follower while nobody leads: the next replica may know more.
    [[ -n $body && $body != *'"unavailable"'* ]] && { echo "$body"; return 0; }
  done
  return 0
}

num() { # field: the number of "field": in the JSON on stdin (nothing when absent)
  { grep -o "\"$1\":[0-9]*" || true; } | head -1 | cut -d: -f2
}
count() { # pattern: how many times it occurs on stdin
  { grep -o -- "$1" || true; } | wc -l
}

# --- build -------------------------------------------------------------------------------------
say "building"
# The same build as scripts/test.sh (every target, one feature set, s3-test-server included), so
# after the tests this is a no-op instead of a rebuild with other features.
cargo build --workspace --all-targets >"$LOG/build.log" 2>&1 \
  || { tail -30 "$LOG/build.log"; fail "cargo build --workspace --all-targets"; }
BIN=target/debug

# --- backends ----------------------------------------------------------------------------------
SKIPPED=()
if [[ $BACKEND != embedded ]]; then
  state="$LOG/pg-state"
  : >"$state"
  # A throwaway cluster first: it can be restarted without touching anyone else's server.
  if PG_URL=$(DS_PG_THROWAWAY=1 DS_PG_STATE="$state" bash scripts/pg.sh 2>>"$LOG/pg.log"); then
    PG_DIR=$(cat "$state")
    PG_BINDIR=$(dirname "$(command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)")
    if [[ $(id -u) == 0 ]]; then PG_RUN=(runuser -u "$(stat -c %U "$PG_DIR")" --); fi
    say "PostgreSQL: throwaway cluster in $PG_DIR"
  elif PG_URL=$(DS_PG_STATE="$state" bash scripts/pg.sh 2>>"$LOG/pg.log"); then
    PG_DIR=$(cat "$state")
    if [[ -n $PG_DIR ]]; then
      PG_BINDIR=$(dirname "$(command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)")
      if [[ $(id -u) == 0 ]]; then PG_RUN=(runuser -u "$(stat -c %U "$PG_DIR")" --); fi
    fi
    say "PostgreSQL: ${PG_URL%%@*}@${PG_URL#*@} (shared: it will not be restarted)"
  else
    PG_URL=
    [[ $BACKEND == production ]] && { cat "$LOG/pg.log"; fail "--backend production, but scripts/pg.sh found no PostgreSQL"; }
    say "no PostgreSQL found (see $LOG/pg.log): embedded backend"
  fi
  if [[ -n $PG_URL ]]; then
    BACKEND=production
    command -v psql >/dev/null || fail "psql is needed to create the chaos database"
    DB_NAME="ds_chaos_$(date +%s)_$$"
    psql "$PG_URL" -Atqc "CREATE DATABASE $DB_NAME" >/dev/null || fail "CREATE DATABASE $DB_NAME"
  fi
fi
[[ -n $BACKEND ]] || BACKEND=embedded

STORE_ENV=()
((REPLICAS == 1)) || [[ $BACKEND == production ]] \
  || fail "--replicas $REPLICAS needs PostgreSQL, and scripts/pg.sh found none"
if [[ $BACKEND == production ]]; then
  DATABASE_URL="${PG_URL%/*}/$DB_NAME"
  S3_ROOT="$LOG/s3"
  start s3-test-server "$BIN/s3-test-server" --addr 127.0.0.1:0 --root "$S3_ROOT"
  line=$(wait_line s3-test-server "s3-test-server listening on" 30)
  S3_ENDPOINT=$(sed -n 's/.*listening on \(http:\/\/[^ ]*\).*/\1/p' <<<"$line")
  S3_ACCESS=$(sed -n 's/.*access_key=\([^ ]*\).*/\1/p' <<<"$line")
  S3_SECRET=$(sed -n 's/.*secret_key=\([^ ]*\).*/\1/p' <<<"$line")
  STORE_ENV=(OBJECT_STORE_URL=s3:// AWS_ENDPOINT_URL="$S3_ENDPOINT" AWS_REGION=us-east-1
    AWS_ACCESS_KEY_ID="$S3_ACCESS" AWS_SECRET_ACCESS_KEY="$S3_SECRET" S3_FORCE_PATH_STYLE=true
    AWS_EC2_METADATA_DISABLED=true)
  say "backend production: PostgreSQL database $DB_NAME, S3 at $S3_ENDPOINT (root $S3_ROOT)"
else
  DATABASE_URL="sqlite://$LOG/ds.db"
  STORE_ENV=(OBJECT_STORE_URL="file://$LOG/objects")
  say "backend embedded: SQLite $LOG/ds.db, objects under $LOG/objects"
fi

# --- processes ---------------------------------------------------------------------------------
start iqair-sim env IQAIR_SIM_ADDR=127.0.0.1:0 IQAIR_SIM_KEYS="$(IFS=,; echo "${IQAIR_KEYS[*]}")" \
  IQAIR_SIM_LIMITS=off "$BIN/iqair-sim"
SIM_ADDR=$(wait_line iqair-sim "listening on" 30 | sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p')

if ((REPLICAS == 1)); then
  SUPERVISORS=(data-streams)
else
  for i in $(seq 1 "$REPLICAS"); do SUPERVISORS+=("data-streams-$i"); done
fi
start_supervisor() { # name: on its ports from the last start, or free ones the first time
  local name=$1 line http workers
  start "$name" env RUST_LOG="${RUST_LOG:-info}" DATA_STREAMS_HTTP_ADDR="${SUP_HTTP[$name]:-127.0.0.1:0}" \
    DATA_STREAMS_WORKER_ADDR="${SUP_WORKERS[$name]:-127.0.0.1:0}" DATA_STREAMS_WORKER_TOKEN="$WORKER_TOKEN" \
    DATA_STREAMS_API_TOKEN="$API_TOKEN" DATABASE_URL="$DATABASE_URL" "${STORE_ENV[@]}" \
    HEARTBEAT_INTERVAL_MS=500 HEARTBEAT_TIMEOUT_MS=3000 ASSIGN_INTERVAL_MS=1000 \
    RECONCILE_INTERVAL_MS=2000 DATABASE_CONNECT_RETRY_SECS=60 "$BIN/data-streams"
  line=$(wait_line "$name" "data-streams listening" 90)
  http=$(sed -n 's/.*listening: http:\/\/\([^ ]*\) (API).*/\1/p' <<<"$line")
  workers=$(sed -n 's/.*(API), \([^ ]*\) (workers).*/\1/p' <<<"$line")
  [[ -n $http && -n $workers ]] || fail "cannot read $name's addresses from: $line"
  SUP_HTTP[$name]=$http SUP_WORKERS[$name]=$workers
}
leader() { # the name of the supervisor GET /cluster names the leader (nothing while none leads)
  local http name
  http=$(api /cluster | { grep -o '"leader":{[^}]*"http_addr":"[^"]*"' || true; } | sed 's/.*"http_addr":"\([^"]*\)"/\1/')
  for name in "${SUPERVISORS[@]}"; do [[ ${SUP_HTTP[$name]} == "$http" ]] && { echo "$name"; return 0; }; done
  return 0
}
epoch() { api /cluster | { grep -o '"epoch":[0-9]*' || true; } | head -1 | cut -d: -f2; }
start_worker() { # 1 or 2
  local addrs name
  addrs=$(for name in "${SUPERVISORS[@]}"; do echo "${SUP_WORKERS[$name]}"; done | paste -sd,)
  start "worker-$1" env RUST_LOG="${RUST_LOG:-info}" DATA_STREAMS_WORKER_ADDR="$addrs" \
    DATA_STREAMS_WORKER_TOKEN="$WORKER_TOKEN" WORKER_ID="chaos-worker-$1" "${STORE_ENV[@]}" \
    WORKER_RECONNECT_MAX_MS=1000 "$BIN/worker"
}
start_s3() {
  start s3-test-server "$BIN/s3-test-server" --addr "${S3_ENDPOINT#http://}" --root "$S3_ROOT"
  wait_line s3-test-server "s3-test-server listening on" 30 >/dev/null
}

for name in "${SUPERVISORS[@]}"; do
  start_supervisor "$name"
  say "$name: http://${SUP_HTTP[$name]} (API), ${SUP_WORKERS[$name]} (workers)"
  # The first one leads before the others start, so every run begins the same way.
  if [[ $name == "${SUPERVISORS[0]}" ]]; then
    for _ in $(seq 1 100); do [[ -n $(leader) ]] && break; sleep 0.2; done
    [[ -n $(leader) ]] || fail "no supervisor leads 20 s after the first started"
  fi
done
say "iqair-sim: $SIM_ADDR"
start_worker 1
start_worker 2
wait_line worker-1 "connected to the supervisor" 60 >/dev/null
wait_line worker-2 "connected to the supervisor" 60 >/dev/null

# --- streams -----------------------------------------------------------------------------------
STREAMS=10
for i in $(seq 0 $((STREAMS - 1))); do
  interval=$((1000 + (i % 5) * 250))
  key=${IQAIR_KEYS[$((i % 2))]}
  body=$(api /streams -X POST -H 'Content-Type: application/json' -d "{\"adapter\": \"IQAIR_DAILY\",
    \"endpoint\": \"http://$SIM_ADDR/v2/nearest_city\", \"secret_key\": \"$key\",
    \"interval\": $interval, \"bucket_name\": \"chaos\",
    \"params\": {\"lat\": $((40 + i)).5, \"lon\": $((i * 7 - 30)).25},
    \"rate_limit\": {\"per_minute\": 0, \"per_day\": 0, \"per_month\": 0}}")
  grep -q '"id":"' <<<"$body" || fail "creating stream $i: $body"
done
say "created $STREAMS streams (1-2 s intervals, keys ${IQAIR_KEYS[*]}, no local call budget)"

# --- the schedule ------------------------------------------------------------------------------
# Worker kills: >= 20 at 300 s, proportionally fewer for shorter runs, at least 6.
# Supervisor kills: >= 5 at 300 s, at least 3. One database and one object store restart.
N_WORKER=$((DURATION * 24 / 300)); ((N_WORKER < 6)) && N_WORKER=6
N_SUPER=$((DURATION * 6 / 300)); ((N_SUPER < 3)) && N_SUPER=3
# With replicas: >= 10 leader kills at 300 s.
((REPLICAS > 1)) && { N_SUPER=$((DURATION * 10 / 300)); ((N_SUPER < 3)) && N_SUPER=3; }
events=()
spread() { # kind, count: one event at a random moment in each of `count` equal slots
  local kind=$1 n=$2 span=$((DURATION - 6)) i
  for ((i = 0; i < n; i++)); do
    local lo=$((3 + i * span / n)) width=$((span / n))
    ((width < 1)) && width=1
    events+=("$((lo * 1000 + RANDOM % (width * 1000))) $kind")
  done
}
spread W "$N_WORKER"
spread S "$N_SUPER"
if [[ -n $PG_DIR ]]; then
  events+=("$(((DURATION / 3 + RANDOM % (DURATION / 6 + 1)) * 1000)) D")
elif [[ $BACKEND == production ]]; then
  SKIPPED+=("database restart: PostgreSQL is the shared server, not a throwaway cluster")
else
  SKIPPED+=("database restart: embedded backend (SQLite in-process)")
fi
if [[ $BACKEND == production ]]; then
  events+=("$(((DURATION * 2 / 3 + RANDOM % (DURATION / 6 + 1)) * 1000)) O")
else
  SKIPPED+=("object store restart: embedded backend (a folder)")
fi
mapfile -t events < <(printf '%s\n' "${events[@]}" | sort -n)

# --- faults, rotating in the background --------------------------------------------------------
FAULTS=(server_error hang html_502 too_many_requests truncated html_504 not_json slow_body)
fault_loop() {
  local i=0 f
  while :; do
    f=${FAULTS[$((i % ${#FAULTS[@]}))]}
    curl -sS -o /dev/null --max-time 5 -X POST "http://$SIM_ADDR/admin/faults" \
      -H 'content-type: application/json' -d "{\"key\": null, \"fault\": \"$f\", \"count\": null}" 2>/dev/null \
      && echo "$(now_iso) on $f" >>"$LOG/faults.log"
    sleep $((2 + RANDOM % 3))
    curl -sS -o /dev/null --max-time 5 -X DELETE "http://$SIM_ADDR/admin/faults" 2>/dev/null || true
    echo "$(now_iso) off" >>"$LOG/faults.log"
    sleep $((2 + RANDOM % 4))
    i=$((i + 1))
  done
}
: >"$LOG/faults.log"
fault_loop &
FAULT_LOOP=$!

# --- chaos -------------------------------------------------------------------------------------
say "chaos for $DURATION s: ${#events[@]} events ($N_WORKER worker kills, $N_SUPER $( ((REPLICAS > 1)) && echo leader || echo supervisor) kills$([[ -n $PG_DIR ]] && echo ", 1 database restart")$([[ $BACKEND == production ]] && echo ", 1 object store restart")), faults rotating"
KILLS_W=0 KILLS_S=0 RESTARTS_D=0 RESTARTS_O=0 LONGEST_LEADERLESS=0
t0=$(date +%s%3N)
CHAOS_START_MS=$t0
for ev in "${events[@]}"; do
  at=${ev%% *} kind=${ev#* }
  left=$((t0 + at - $(date +%s%3N)))
  ((left > 0)) && sleep "$((left / 1000)).$(printf %03d $((left % 1000)))"
  case $kind in
    W)
      w=$((1 + (RANDOM >> 7) % 2))
      kill9 "worker-$w"
      sleep "0.$((RANDOM % 10))"
      start_worker "$w"
      KILLS_W=$((KILLS_W + 1))
      say "SIGKILL worker-$w, restarted ($KILLS_W)"
      ;;
    S)
      if ((REPLICAS == 1)); then
        kill9 data-streams
        sleep "$((RANDOM % 2)).$((RANDOM % 10))"
        start_supervisor data-streams
        KILLS_S=$((KILLS_S + 1))
        say "SIGKILL data-streams, restarted on the same ports ($KILLS_S)"
      else
        victim=$(leader)
        if [[ -z $victim ]]; then
          say "no leader to kill right now (a takeover under way): skipped"
          continue
        fi
        before=$(epoch)
        killed_at=$(date +%s%3N)
        kill9 "$victim"
        sleep "0.$((RANDOM % 10))"
        start_supervisor "$victim"
        KILLS_S=$((KILLS_S + 1))
        # Until another replica leads (or 40 s): the leaderless time.
        while :; do
          now_epoch=$(epoch)
          [[ -n $now_epoch && -n $before && $now_epoch -gt $before ]] && break
          (($(date +%s%3N) - killed_at > 40000)) && fail "no new leader 40 s after killing $victim"
          sleep 0.2
        done
        leaderless=$(($(date +%s%3N) - killed_at))
        ((leaderless > LONGEST_LEADERLESS)) && LONGEST_LEADERLESS=$leaderless
        say "SIGKILL leader $victim (epoch $before), restarted as a follower; $(leader) leads at epoch $now_epoch after ${leaderless} ms ($KILLS_S)"
      fi
      ;;
    D)
      say "restarting PostgreSQL (pg_ctl restart -m fast)"
      "${PG_RUN[@]}" "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 -m fast restart \
        >>"$LOG/pg.log" 2>&1 || fail "pg_ctl restart (see $LOG/pg.log)"
      RESTARTS_D=1
      say "PostgreSQL restarted"
      ;;
    O)
      kill9 s3-test-server
      sleep 2
      start_s3
      RESTARTS_O=1
      say "s3-test-server killed and restarted on the same port and root (down 2 s)"
      ;;
  esac
done
left=$((t0 + DURATION * 1000 - $(date +%s%3N)))
((left > 0)) && sleep "$((left / 1000)).$(printf %03d $((left % 1000)))"
kill "$FAULT_LOOP" 2>/dev/null || true
wait "$FAULT_LOOP" 2>/dev/null || true
FAULT_LOOP=
curl -sS -o /dev/null --max-time 5 -X DELETE "http://$SIM_ADDR/admin/faults" || fail "cannot clear the faults"
FAULTS_ON=$(grep -c ' on ' "$LOG/faults.log" || true)
CHAOS_END=$(now_iso)
CHAOS_END_MS=$(date +%s%3N)
say "chaos over: $KILLS_W worker kills, $KILLS_S $( ((REPLICAS > 1)) && echo leader || echo supervisor) kills (longest leaderless ${LONGEST_LEADERLESS} ms), $RESTARTS_D database restart(s), $RESTARTS_O object store restart(s), $FAULTS_ON faults switched on ($(grep -o ' on .*' "$LOG/faults.log" | sort | uniq -c | awk '{printf "%s%s x%s", s, $3, $1; s=", "}'))"
for s in "${SKIPPED[@]}"; do say "skipped $s"; done

# --- settle ------------------------------------------------------------------------------------
# Every stream running again (on a connected worker), with a result after the chaos.
deadline=$(($(date +%s) + 120))
while :; do
  audit=$(api /audit)
  running=$(num streams_running <<<"$audit"); total=$(num streams_total <<<"$audit")
  fresh=$(api /streams | { grep -o '"last_result_at":"[^"]*"' || true; } | cut -d'"' -f4 | awk -v t="$CHAOS_END" '$0 > t' | wc -l)
  [[ -n $running && $running == "$total" && $total == "$STREAMS" && $fresh == "$STREAMS" ]] && break
  (($(date +%s) < deadline)) || fail "after 120 s: streams running ${running:-?}/${total:-?}, $fresh of $STREAMS with a result since the chaos ended"
  sleep 1
done
say "all $STREAMS streams running, each with results since the chaos ended"

# Quiesce: every fetch fails (server_error for every key, a transient error that stops nothing),
# so no new objects appear; wait until objects and references stop changing with both workers
# connected (their outboxes replayed and acknowledged).
curl -sS -o /dev/null --max-time 5 -X POST "http://$SIM_ADDR/admin/faults" -H 'content-type: application/json' \
  -d '{"key": null, "fault": "server_error", "count": null}' || fail "cannot quiesce the simulator"
deadline=$(($(date +%s) + 120)) last= same=0
while :; do
  sleep 2
  audit=$(api /audit)
  connected=$(api /workers | count '"connected":true')
  now="$(num objects <<<"$audit")/$(num references <<<"$audit")"
  if [[ $connected == 2 && $now == "$last" && -n $(num objects <<<"$audit") ]]; then
    same=$((same + 1))
  else
    same=0
  fi
  last=$now
  ((same >= 3)) && break
  (($(date +%s) < deadline)) || fail "no quiet point within 120 s (objects/references $now, workers connected $connected)"
done
QUIET=$(now_iso)
say "quiet at $QUIET (objects/references $last, both workers connected); waiting for a reconciler pass"
deadline=$(($(date +%s) + 60))
while :; do
  at=$(api /reconciler | { grep -o '"last_run_at":"[^"]*"' || true; } | cut -d'"' -f4)
  [[ -n $at && $at > $QUIET ]] && break
  (($(date +%s) < deadline)) || fail "no reconciler pass after $QUIET within 60 s"
  sleep 1
done
say "reconciler pass at $at: $(api /reconciler)"

audit=$(api /audit)
say "audit: $audit"
objects=$(num objects <<<"$audit"); references=$(num references <<<"$audit")
orphans=$(num orphans <<<"$audit"); dangling=$(num dangling <<<"$audit")
duplicates=$(num duplicates <<<"$audit"); unlisted=$(num unlisted <<<"$audit")
running=$(num streams_running <<<"$audit"); total=$(num streams_total <<<"$audit")
[[ -n $objects && -n $references && -n $running ]] || fail "no audit: $audit"
# Then an audit pass: the reconciler's whole-window listing (the periodic pass lists only what is
# newer than each stream's watermark). It must find nothing the periodic passes left behind, and
# it counts the window's dangling references itself.
pass=$(api /reconciler/audit -X POST --max-time 120)
say "audit pass: $pass"
pass_inserted=$(num inserted <<<"$pass"); pass_dangling=$(num dangling <<<"$pass")
[[ -n $pass_inserted && -n $pass_dangling ]] || fail "no audit pass: $pass"
((pass_dangling > dangling)) && dangling=$pass_dangling
curl -sS -o /dev/null --max-time 5 -X DELETE "http://$SIM_ADDR/admin/faults" || true

# The longest time a stream went without a stored result during the chaos, from the objects
# themselves: each file's name is its result id, a UUIDv7 whose first 48 bits are the slot's ms.
OBJECT_ROOT=$LOG/objects
[[ $BACKEND == production ]] && OBJECT_ROOT=$S3_ROOT
GAP=$(find "$OBJECT_ROOT" -type f -path '*stream_id=*' -name '*.json' 2>/dev/null \
  | sed -n 's|.*stream_id=\([0-9a-f-]*\)/.*/\([0-9a-f]\{8\}\)-\([0-9a-f]\{4\}\)-[^/]*\.json$|\1 \2\3|p' \
  | while read -r stream hex; do echo "$stream $((16#$hex))"; done \
  | sort -k1,1 -k2,2n \
  | awk -v a="$CHAOS_START_MS" -v b="$CHAOS_END_MS" \
      '$2 >= a && $2 <= b { if ($1 == p && $2 - last > g) g = $2 - last; p = $1; last = $2 } END { print g + 0 }')

ok=1
[[ $orphans == 0 && $dangling == 0 && $duplicates == 0 && $unlisted == 0 ]] || ok=0
[[ $pass_inserted == 0 ]] || { say "the audit pass indexed $pass_inserted objects the periodic passes missed"; ok=0; }
[[ $objects == "$references" && $running == "$total" && $total == "$STREAMS" ]] || ok=0
((ok)) && PASSED=1
cleanup
echo "objects=$objects references=$references orphans=$orphans dangling=$dangling duplicates=$duplicates streams_running=$running/$total longest_result_gap_ms=$GAP longest_leaderless_ms=$LONGEST_LEADERLESS"
((ok))
