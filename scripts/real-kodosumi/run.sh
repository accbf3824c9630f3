#!/usr/bin/env bash
# Checks kodomasu's Kodosumi client against a REAL Kodosumi 1.1.0 (not the simulator):
#
#   bash scripts/real-kodosumi/run.sh [extra args for the test binary, e.g. a test name]
#
# It starts, all on 127.0.0.1 and with every runtime file under one temp dir (removed at exit
# unless KODO_KEEP=1):
#   1. a Ray head node (`ray start --head --block`, 4 logical CPUs, small object store, the
#      dashboard on, because Kodosumi's spooler lists actors through Ray's state API);
#   2. the flow app scripts/real-kodosumi/hello_app.py under uvicorn on $KODO_APP_PORT (8011);
#   3. the spooler (`koco spool --block`);
#   4. the panel (`koco serve --register http://127.0.0.1:$KODO_APP_PORT/openapi.json`) on
#      127.0.0.1:$KODO_PANEL_PORT (3370), user admin/admin;
# waits until `POST /api/login` and `GET /flow` work, runs
#   KODOMASU_REAL_KODOSUMI_URL=http://127.0.0.1:3370 cargo test -p activities --test kodosumi_real -- --ignored
# and stops everything it started (by process group) on exit.
#
# Python: Kodosumi 1.1.0 says `Requires-Python >=3.10` but needs 3.12 (f-strings with
# backslashes in service/inputs/forms.py, sqlite3.connect(autocommit=) in spooler.py).
#   KODO_VENV    a venv that already has kodosumi 1.1.0 (checked: Python >= 3.12); when unset,
#                /tmp/kodomasu-kodo-venv is created (python -m venv + pip install kodosumi==1.1.0)
#                on first use and reused afterwards;
#   KODO_PYTHON  the Python >= 3.12 to create that venv with (default: the first that works of
#                python3.12, python3.13, python3, pyenv's 3.12.x, pyenv's 3.13+).
# KODO_SERVE_ONLY=1 starts everything and waits (Ctrl-C stops it) instead of running the check.
# Ports: KODO_PANEL_PORT (3370), KODO_APP_PORT (8011), KODO_RAY_PORT (6390; 6379 is often a
# Redis), KODO_DASHBOARD_PORT (8275).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PANEL_PORT="${KODO_PANEL_PORT:-3370}"
APP_PORT="${KODO_APP_PORT:-8011}"
RAY_PORT="${KODO_RAY_PORT:-6390}"
DASHBOARD_PORT="${KODO_DASHBOARD_PORT:-8275}"
PANEL="http://127.0.0.1:$PANEL_PORT"
APP="http://127.0.0.1:$APP_PORT"

log() { printf '[real-kodosumi] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# --- Python and the venv --------------------------------------------------------------------

is_py312() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

find_python() {
  local c
  if [[ -n "${KODO_PYTHON:-}" ]]; then
    is_py312 "$KODO_PYTHON" || die "KODO_PYTHON=$KODO_PYTHON is not Python >= 3.12"
    echo "$KODO_PYTHON"; return
  fi
  # 3.12 first: the version this was checked with.
  for c in python3.12 python3.13 python3; do
    if command -v "$c" >/dev/null 2>&1 && is_py312 "$c"; then command -v "$c"; return; fi
  done
  local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
  for c in $(ls -d "$pyenv_root"/versions/3.12*/bin/python3 2>/dev/null | sort -rV) \
           $(ls -d "$pyenv_root"/versions/3.1[3-9]*/bin/python3 2>/dev/null | sort -V); do
    if is_py312 "$c"; then echo "$c"; return; fi
  done
  die "no Python >= 3.12 found (Kodosumi 1.1.0 needs it); set KODO_PYTHON"
}

if [[ -n "${KODO_VENV:-}" ]]; then
  VENV="$KODO_VENV"
  [[ -x "$VENV/bin/python" ]] || die "KODO_VENV=$VENV has no bin/python"
  is_py312 "$VENV/bin/python" || die "KODO_VENV=$VENV runs $("$VENV/bin/python" -V 2>&1); \
Kodosumi 1.1.0 needs Python >= 3.12 (its forms.py does not even parse on 3.11). \
Unset KODO_VENV to build a 3.12 venv, or point it at one."
else
  VENV=/tmp/kodomasu-kodo-venv
  if [[ ! -x "$VENV/bin/koco" ]]; then
    PY="$(find_python)"
    log "creating $VENV with $PY ($("$PY" -V 2>&1)) and installing kodosumi==1.1.0"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "kodosumi==1.1.0"
  fi
fi
got="$("$VENV/bin/python" -c 'import kodosumi; print(kodosumi.__version__)' 2>/dev/null || true)"
[[ "$got" == "1.1.0" ]] || die "$VENV has kodosumi '${got:-none}', want 1.1.0"
log "venv $VENV: $("$VENV/bin/python" -V 2>&1), kodosumi $got, ray $("$VENV/bin/python" -c 'import ray; print(ray.__version__)')"

# --- the Rust check is built before anything starts ------------------------------------------

if [[ "${KODO_SERVE_ONLY:-0}" != 1 ]]; then
  log "building the check (cargo test -p activities --test kodosumi_real --no-run)"
  (cd "$ROOT" && cargo test -p activities --test kodosumi_real --no-run -q)
fi

# --- runtime dir and cleanup -----------------------------------------------------------------

for port in "$PANEL_PORT" "$APP_PORT" "$RAY_PORT" "$DASHBOARD_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is already in use (set KODO_PANEL_PORT/KODO_APP_PORT/KODO_RAY_PORT/KODO_DASHBOARD_PORT)"
  fi
done

# Short: Ray puts unix sockets under it (path length limit ~107).
WORK="$(mktemp -d /tmp/kodo-real.XXXXXX)"
PGIDS=()
cleanup() {
  local rc=$? pg i
  trap - EXIT INT TERM
  log "stopping (exit code $rc)"
  for ((i = ${#PGIDS[@]} - 1; i >= 0; i--)); do
    pg="${PGIDS[$i]}"
    kill -TERM -- "-$pg" 2>/dev/null || true
  done
  for _ in $(seq 1 50); do
    local alive=0
    for pg in "${PGIDS[@]}"; do kill -0 -- "-$pg" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.2
  done
  for pg in "${PGIDS[@]}"; do kill -KILL -- "-$pg" 2>/dev/null || true; done
  if [[ "${KODO_KEEP:-0}" == 1 || $rc != 0 ]]; then
    log "logs and data kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts "$@" in its own session (its pid is its process group), output to $WORK/<name>.log.
start_bg() {
  local name="$1"; shift
  setsid "$@" >"$WORK/$name.log" 2>&1 < /dev/null &
  local pid=$!
  disown "$pid"  # stopped by process group in cleanup; no job notices
  PGIDS+=("$pid")
  log "started $name (pid $pid, log $WORK/$name.log)"
}

wait_for() {
  local what="$1" secs="$2"; shift 2
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - t0 >= secs )) && die "$what not up after ${secs}s"
    sleep 1
  done
  log "$what is up after $((SECONDS - t0))s"
}

export PATH="$VENV/bin:$PATH"
# All Kodosumi state under $WORK (its Settings read KODO_*; cwd $WORK for ./data and .env).
export KODO_EXEC_DIR="$WORK/data/execution"
export KODO_UPLOAD_DIR="$WORK/data/uploads"
export KODO_SPOOLER_LOG_FILE="$WORK/data/spooler.log"
export KODO_APP_LOG_FILE="$WORK/data/app.log"
export KODO_ADMIN_DATABASE="sqlite+aiosqlite:///$WORK/data/admin.db"
export KODO_YAML_BASE="$WORK/data/config/config.yaml"
export KODO_RAY_SERVER="127.0.0.1:$RAY_PORT"
export KODO_RAY_DASHBOARD="http://127.0.0.1:$DASHBOARD_PORT"
export KODO_APP_SERVER="$PANEL"
export KODO_ADMIN_PASSWORD=admin
export RAY_ADDRESS="127.0.0.1:$RAY_PORT"
export RAY_USAGE_STATS_ENABLED=0
# Ray workers run the entry points "hello_app:run_hello": they import hello_app from here.
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$WORK/data"
cd "$WORK"

# --- 1. Ray ----------------------------------------------------------------------------------

start_bg ray ray start --head --block --node-ip-address=127.0.0.1 --port="$RAY_PORT" \
  --num-cpus=4 --object-store-memory=$((200 * 1024 * 1024)) --temp-dir="$WORK/ray" \
  --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
  --disable-usage-stats
wait_for "ray (GCS $RAY_PORT, dashboard $DASHBOARD_PORT)" 120 \
  curl -fsS "http://127.0.0.1:$DASHBOARD_PORT/api/version"
ray_ok() { python -c 'import ray; ray.init(address="auto", logging_level="ERROR"); print(ray.cluster_resources())'; }
wait_for "ray client connection" 60 ray_ok

# --- 2. the flow app -------------------------------------------------------------------------

start_bg flow-app python -m uvicorn --app-dir "$HERE" hello_app:app --host 127.0.0.1 --port "$APP_PORT"
wait_for "flow app $APP" 60 curl -fsS "$APP/openapi.json"

# --- 3. spooler, 4. panel --------------------------------------------------------------------

start_bg spooler koco spool --block --exec-dir "$KODO_EXEC_DIR" --ray-server "$KODO_RAY_SERVER"
start_bg panel koco serve --address "$PANEL" --exec-dir "$KODO_EXEC_DIR" \
  --register "$APP/openapi.json" --level INFO
login() { curl -fsS -X POST "$PANEL/api/login" -H 'content-type: application/json' \
  -d '{"name":"admin","password":"admin"}'; }
wait_for "panel $PANEL (POST /api/login)" 120 login
flows_listed() {
  local token
  token="$(login | python -c 'import json,sys; print(json.load(sys.stdin)["KODOSUMI_API_KEY"])')"
  curl -fsS "$PANEL/flow?pp=10" -H "KODOSUMI_API_KEY: $token" | grep -q '"Confirm Flow"'
}
wait_for "flows registered (GET /flow)" 60 flows_listed
spooler_up() { koco spool --status --ray-server "$KODO_RAY_SERVER" 2>/dev/null | grep -q 'is running'; }
wait_for "spooler" 60 spooler_up

# --- the check -------------------------------------------------------------------------------

if [[ "${KODO_SERVE_ONLY:-0}" == 1 ]]; then
  log "serving until interrupted: KODOMASU_REAL_KODOSUMI_URL=$PANEL KODOMASU_REAL_KODOSUMI_APP=$APP"
  # In the background, so that a signal runs the EXIT trap at once.
  while true; do sleep 3600 & wait $!; done
fi

log "running the check against $PANEL"
cd "$ROOT"
set +e
KODOMASU_REAL_KODOSUMI_URL="$PANEL" KODOMASU_REAL_KODOSUMI_APP="$APP" RUST_BACKTRACE=0 \
  cargo test -p activities --test kodosumi_real -q -- --ignored --nocapture --test-threads=1 "$@"
rc=$?
set -e
if [[ $rc != 0 ]]; then
  log "the check failed (exit $rc); last lines of the logs:"
  for f in "$WORK"/*.log "$WORK"/data/*.log; do
    [[ -f "$f" ]] || continue
    printf '\n--- %s\n' "$f" >&2
    tail -n 25 "$f" >&2
  done
fi
exit "$rc"
