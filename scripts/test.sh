#!/usr/bin/env bash
# The one test command: `bash scripts/test.sh [extra cargo test args]`.
#
# Finds a PostgreSQL for the tests, in this order:
#   1. DATABASE_URL when set;
#   2. a server on 127.0.0.1:5432 (user postgres, trust auth);
#   3. a throwaway cluster started with initdb/pg_ctl when the binaries are installed
#      (removed again when the script exits);
# and otherwise stops with a message that says what to install.
# Each test then creates its own database on that server.
# KODOMASU_TEST_PG=throwaway skips 1 and 2 (to check the throwaway-cluster path itself).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test.sh] %s\n' "$*" >&2; }

can_connect() {
  # pg_isready needs no password and no database; fall back to psql when it is missing.
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -d "$1" >/dev/null 2>&1
  elif command -v psql >/dev/null 2>&1; then
    psql "$1" -Atqc 'select 1' >/dev/null 2>&1
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) >/dev/null 2>&1
  fi
}

find_pg_bin() {
  local dir
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"; return 0
  fi
  for dir in $(ls -d /usr/lib/postgresql/*/bin /usr/local/pgsql/bin /opt/homebrew/bin /usr/local/bin 2>/dev/null | sort -rV); do
    if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then echo "$dir"; return 0; fi
  done
  return 1
}

start_throwaway_cluster() {
  local bin="$1" port=55432 dir run_as=()
  dir="$(mktemp -d /tmp/kodomasu-pg.XXXXXX)"
  if [[ "$(id -u)" == 0 ]]; then
    # initdb refuses to run as root.
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown -R postgres "$dir"
    run_as=(runuser -u postgres --)
  fi
  log "starting a throwaway PostgreSQL cluster in $dir on port $port"
  "${run_as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  "${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
  trap "'${run_as[*]:-env}' '$bin/pg_ctl' -D '$dir/data' -m immediate stop >/dev/null 2>&1 || true; rm -rf '$dir'" EXIT
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

force_throwaway=""
if [[ "${KODOMASU_TEST_PG:-}" == throwaway ]]; then
  force_throwaway=1
  unset DATABASE_URL
fi

if [[ -z "$force_throwaway" && -n "${DATABASE_URL:-}" ]]; then
  log "using DATABASE_URL from the environment"
elif [[ -z "$force_throwaway" ]] && can_connect "postgres://postgres@127.0.0.1:5432/postgres"; then
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  log "using PostgreSQL on 127.0.0.1:5432"
elif bin="$(find_pg_bin)"; then
  start_throwaway_cluster "$bin"
else
  cat >&2 <<'MSG'
[test.sh] No PostgreSQL found. The tests need a real PostgreSQL server. Either
  - set DATABASE_URL to a server where the user may create databases, or
  - run PostgreSQL on 127.0.0.1:5432 with user `postgres` (trust auth), or
  - install the PostgreSQL server binaries (Debian/Ubuntu: `apt-get install postgresql`;
    macOS: `brew install postgresql`) and this script starts a throwaway cluster itself.
MSG
  exit 1
fi

# The chaos tests run the real `kodomasu` binary: build it before the tests.
log "building the workspace"
cargo build --workspace --all-targets --locked
log "running the tests"
cargo test --workspace --locked "$@"

# The dashboard in headless Chromium (installs Chromium and the test's npm packages if missing).
log "running the browser test"
KODOMASU_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/kodomasu" bash scripts/browser-test.sh
