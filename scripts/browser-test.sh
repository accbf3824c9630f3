#!/usr/bin/env bash
# The dashboard's end-to-end test in headless Chromium: `bash scripts/browser-test.sh`.
#
# Installs what is missing (Debian's `chromium` with apt-get when running as root; the test's
# npm packages with `npm ci` from tests/browser/package-lock.json), builds the `kodomasu`
# binary, and runs tests/browser/dashboard.test.mjs, which starts `kodomasu dev` on a free port
# and drives the dashboard. Screenshots go to target/screenshots/.
#
# Environment: CHROMIUM (a Chromium binary to use), KODOMASU_BIN (a prebuilt binary; skips the
# build), SCREENSHOT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[browser-test.sh] %s\n' "$*" >&2; }
die() { printf '[browser-test.sh] %s\n' "$*" >&2; exit 1; }

find_chromium() {
  local name
  if [[ -n "${CHROMIUM:-}" ]]; then echo "$CHROMIUM"; return 0; fi
  for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  done
  return 1
}

apt_install() {
  if [[ "$(id -u)" != 0 ]]; then
    die "$1 is missing and this script is not root: install it (Debian/Ubuntu: sudo apt-get install -y $2) and run again"
  fi
  command -v apt-get >/dev/null 2>&1 \
    || die "$1 is missing and there is no apt-get here: install $2 with your package manager"
  log "installing $2 with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed; cannot install $2"
  # shellcheck disable=SC2086 # $2 may name several packages
  apt-get install -y -qq $2 >/dev/null || die "apt-get install $2 failed"
}

if [[ -n "${CHROMIUM:-}" && ! -x "$CHROMIUM" ]]; then
  die "CHROMIUM=$CHROMIUM is not an executable"
fi
if ! chromium_bin="$(find_chromium)"; then
  apt_install "Chromium" chromium
  chromium_bin="$(find_chromium)" || die "chromium was installed but is not on PATH"
fi
log "chromium: $chromium_bin ($("$chromium_bin" --version 2>/dev/null | head -1 || true))"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install "Node.js" "nodejs npm"
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if (( node_major < 20 )); then
  die "Node.js $(node --version) is too old: playwright-core needs Node 20 or newer"
fi

log "npm ci (tests/browser)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error) \
  || die "npm ci failed in tests/browser (is the npm registry reachable?)"

if [[ -z "${KODOMASU_BIN:-}" ]]; then
  log "building the kodomasu binary"
  cargo build -p api --bin kodomasu --locked
  export KODOMASU_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/kodomasu"
fi

export CHROMIUM="$chromium_bin"
log "running tests/browser/dashboard.test.mjs"
node tests/browser/dashboard.test.mjs
