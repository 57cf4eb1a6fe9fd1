#!/usr/bin/env bash
# Benchmarks side by side (BENCHMARKS.md): builds in release mode, then runs
#
#   scripts/bench.sh [protocol|pipeline|scale|live|pages|ingest|supervisor|all] [--quick]
#
#   protocol  our control link vs the NestJS TCP peer (../shared/peers/nestjs-tcp, or
#             NESTJS_PEER_DIR) vs a bare length-delimited echo, same workload, same run
#   pipeline  1,000 and 10,000 streams against iqair-sim, SQLite + folder and PostgreSQL +
#             loopback S3, vs the simulator's bare GET rate
#   scale     10,000 / 100,000 / 1,000,000 streams in one worker: RSS, start time, lag, restart
#   live      the 1,000-stream pipeline with and without 1,000 WebSocket clients on GET /live:
#             results/s, commit-to-client latency
#   pages     one HTTP_JSON run of 1,000 pages against json-sim (20 ms a page) at
#             page_concurrency 1, 4, 16, 64: duration, speed-up, the worker's RSS
#   ingest    NDJSON pushed to a PUSH stream (200-byte and 10 KB records) against the same
#             server discarding the same body (the ceiling): MB/s, records/s, server RSS,
#             on SQLite + folder and PostgreSQL + S3; then one 1 GiB push: its RSS
#   supervisor 1,000,000 streams (--quick 100,000; SUPERVISOR_BENCH_STREAMS=n) created through
#             the bulk API, 4 workers, SQLite and PostgreSQL (folder store): create time, time
#             until all run, supervisor RSS, results/s and lag, reconciler pass, list latency,
#             a killed worker's streams back
#
# Prints `<system> <metric> <value>` lines and one `ratio` line per goal on stdout; progress on
# stderr. Exits non-zero only when a run fails, never because of a figure.
# PostgreSQL (pipeline, ingest, supervisor) is found or started by scripts/pg.sh, as for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

part=${1:-all}
shift || true
case $part in
  protocol|pipeline|scale|live|pages|ingest|supervisor|all) ;;
  -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
  *) echo "bench: unknown part '$part' (protocol|pipeline|scale|live|pages|ingest|supervisor|all)" >&2; exit 2 ;;
esac

echo "bench: cargo build --release" >&2
cargo build --release --workspace --bins --features objects/test-server >&2

if [[ $part == pipeline || $part == ingest || $part == supervisor || $part == all ]]; then
  state=$(mktemp -t ds-pg-state.XXXXXX)
  trap 'bash scripts/pg-stop.sh "$state"' EXIT
  BENCH_POSTGRES_URL=$(DS_PG_STATE="$state" bash scripts/pg.sh)
  export BENCH_POSTGRES_URL
fi

# The live benchmark holds 1,000 WebSocket connections on each side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# CARGO_TARGET_DIR, when set, is where cargo put the binaries.
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
export BENCH_BIN_DIR=${BENCH_BIN_DIR:-$target_dir/release}
"$target_dir/release/ds-bench" "$part" "$@"
