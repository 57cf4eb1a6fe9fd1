#!/usr/bin/env bash
# The whole test suite: unit, behaviour (SQLite and PostgreSQL, folder and loopback S3),
# protocol, adapter/simulator and end-to-end tests with the real binaries.
# PostgreSQL is found or started by scripts/pg.sh; its tests never skip.
set -euo pipefail
cd "$(dirname "$0")/.."

state=$(mktemp -t ds-pg-state.XXXXXX)
trap 'bash scripts/pg-stop.sh "$state"' EXIT

TEST_POSTGRES_URL=$(DS_PG_STATE="$state" bash scripts/pg.sh)
export TEST_POSTGRES_URL
echo "test.sh: PostgreSQL for the tests: ${TEST_POSTGRES_URL%%@*}@${TEST_POSTGRES_URL#*@}" >&2

# One build of every target with one feature set. The end-to-end tests run the real binaries;
# `--all-targets` builds them with the dev-dependency features that the tests unify in (tokio's
# test-util, the S3 test server), so the binaries are not compiled a second time. A plain
# `cargo build --bins` here would rebuild tokio and everything above it with other features.
cargo build --workspace --all-targets
cargo test --workspace --all-targets "$@"
