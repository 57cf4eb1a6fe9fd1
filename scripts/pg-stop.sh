#!/usr/bin/env bash
# Stop and remove the throwaway PostgreSQL cluster that scripts/pg.sh recorded in STATE (if it
# started one), then remove STATE. Used by test.sh and bench.sh on exit.
#   scripts/pg-stop.sh STATE
state=${1:?usage: pg-stop.sh STATE}
dir=$(cat "$state" 2>/dev/null || true)
if [[ -n "$dir" && -d "$dir/data" ]]; then
  bindir=$(dirname "$(command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)")
  if [[ $(id -u) == 0 ]]; then runuser -u "$(stat -c %U "$dir")" -- "$bindir/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
  else "$bindir/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true; fi
  rm -rf "$dir"
fi
rm -f "$state"
