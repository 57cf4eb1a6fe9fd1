#!/usr/bin/env bash
# Find or start PostgreSQL for the tests, and print its URL on stdout (logs go to stderr).
#   1. DATABASE_URL, if it is a postgres:// URL;
#   2. else the server on 127.0.0.1:5432, if one answers;
#   3. else a throwaway cluster (initdb + pg_ctl) in a temp folder, stopped by scripts/test.sh.
# Fails loudly, saying why, when none of these works.
set -euo pipefail

log() { echo "pg.sh: $*" >&2; }

answers() { # url
  if command -v psql >/dev/null 2>&1; then
    PGCONNECT_TIMEOUT=3 psql "$1" -Atqc 'select 1' >/dev/null 2>&1
  else
    local hostport=${1#*@}; hostport=${hostport%%/*}
    (exec 3<>"/dev/tcp/${hostport%%:*}/${hostport##*:}") 2>/dev/null
  fi
}

if [[ "${DATABASE_URL:-}" == postgres://* || "${DATABASE_URL:-}" == postgresql://* ]]; then
  answers "$DATABASE_URL" || { log "DATABASE_URL is set but does not answer: ${DATABASE_URL%%@*}@..."; exit 1; }
  log "using DATABASE_URL"
  echo "$DATABASE_URL"; exit 0
fi

# DS_PG_THROWAWAY=1 skips the shared server (to test the throwaway path).
[[ "${DS_PG_THROWAWAY:-}" == 1 ]] || for url in "postgres://postgres@127.0.0.1:5432/postgres" "postgres://postgres:postgres@127.0.0.1:5432/postgres"; do
  if answers "$url"; then log "using the server on 127.0.0.1:5432"; echo "$url"; exit 0; fi
done

initdb=$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
if [[ -z "$initdb" ]]; then
  log "no PostgreSQL: DATABASE_URL is unset, nothing answers on 127.0.0.1:5432, and initdb is not installed."
  log "install it (apt-get install postgresql) or set DATABASE_URL=postgres://..."
  exit 1
fi
bindir=$(dirname "$initdb")
dir=$(mktemp -d -t ds-pg.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 55432)
run=()
if [[ $(id -u) == 0 ]]; then
  # initdb refuses to run as root: use an unprivileged account.
  user=postgres; id "$user" >/dev/null 2>&1 || user=nobody
  chown "$user" "$dir"
  run=(runuser -u "$user" --)
fi
log "starting a throwaway cluster in $dir on port $port"
"${run[@]}" "$bindir/initdb" -D "$dir/data" -U postgres -A trust >"$dir/initdb.log" 2>&1 \
  || { log "initdb failed:"; cat "$dir/initdb.log" >&2; exit 1; }
"${run[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >&2 \
  || { log "pg_ctl start failed:"; cat "$dir/server.log" >&2; exit 1; }
echo "$dir" > "${DS_PG_STATE:-/dev/null}"
echo "postgres://postgres@127.0.0.1:$port/postgres"
