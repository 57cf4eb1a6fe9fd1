#!/usr/bin/env bash
# The whole test suite: unit, behaviour (SQLite and PostgreSQL, folder and loopback S3),
# protocol, adapter/simulator, end-to-end tests with the real binaries, the console in a real
# browser (headless Chromium), schemathesis against the API's OpenAPI document and the Kubernetes
# manifests against the Kubernetes schema (scripts/k8s-validate.sh).
# PostgreSQL is found or started by scripts/pg.sh; Chromium, chromedriver and schemathesis are
# installed when missing. No test skips: a missing dependency fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

# Chromium and its WebDriver, from Debian's packages (the console's browser tests).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "test.sh: installing chromium and chromium-driver (apt-get)" >&2
  if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: chromium and chromedriver are missing and this is not root: install them with 'apt-get install -y chromium chromium-driver'" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; } \
    || { echo "test.sh: cannot install chromium and chromium-driver" >&2; exit 1; }
fi
export CHROMIUM=${CHROMIUM:-$(command -v chromium)}
export CHROMEDRIVER=${CHROMEDRIVER:-$(command -v chromedriver)}

# Schemathesis and DuckDB (the analyst's client of the warehouse tests) from PyPI, in a virtual
# environment of its own under target/ (not committed).
venv=target/test-venv
if [[ ! -x $venv/bin/schemathesis ]] || ! "$venv/bin/python" -c 'import duckdb' 2>/dev/null; then
  echo "test.sh: installing schemathesis and duckdb into $venv (pip)" >&2
  mkdir -p target
  [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'schemathesis>=4,<5' 'duckdb>=1.1,<2' \
    || { echo "test.sh: cannot install schemathesis and duckdb from PyPI" >&2; exit 1; }
fi
export SCHEMATHESIS=${SCHEMATHESIS:-$PWD/$venv/bin/schemathesis}
export DUCKDB_PYTHON=${DUCKDB_PYTHON:-$PWD/$venv/bin/python}

# The Kubernetes manifests (deploy/k8s) against the Kubernetes schema, with kubernetes-validate
# from PyPI in the same virtual environment. About a second; first, so a bad manifest fails
# before the build.
bash scripts/k8s-validate.sh

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
