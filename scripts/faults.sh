#!/usr/bin/env bash
# The fault tests (tests/tests/faults.rs) in their long form, for manual runs:
#
#   bash scripts/faults.sh                      # all four, 5× the CI load, one at a time
#   bash scripts/faults.sh frozen               # only the tests whose name contains `frozen`
#   KODOMASU_FAULTS_SCALE=10 KODOMASU_FAULTS_ROUNDS=3 bash scripts/faults.sh
#
# KODOMASU_FAULTS_SCALE (default 5) multiplies each test's load and fault phases: workflows
# started, database restarts, the storm's length, paid jobs and the simulators' outage.
# KODOMASU_FAULTS_ROUNDS (default 1) repeats the whole run. CI runs the short form (scale 1)
# with every other test through scripts/test.sh, which also finds the PostgreSQL to use.
# Process logs of each test: target/debug/test-logs/faults_*/.
set -euo pipefail
cd "$(dirname "$0")/.."

export KODOMASU_FAULTS_SCALE="${KODOMASU_FAULTS_SCALE:-5}"
rounds="${KODOMASU_FAULTS_ROUNDS:-1}"
for ((round = 1; round <= rounds; round++)); do
  printf '[faults.sh] round %d of %d, KODOMASU_FAULTS_SCALE=%s\n' "$round" "$rounds" "$KODOMASU_FAULTS_SCALE" >&2
  bash scripts/test.sh --test faults "$@" -- --nocapture --test-threads=1
done
