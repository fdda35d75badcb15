#!/usr/bin/env bash
# The long reliability tier (docs/reliability.md): the CI tier's randomized tests at full size (each reads
# TIDEMARK_LONG=1), then the fuzzers. The malformed-event corpus (tests/integration bad_input) is fixed and
# runs whole in CI, so it is not repeated here. Each test prints its seed; export the printed variable to replay a failure:
#   TIDEMARK_CRASH_SEED (stream crash loops, with and without fail points), TIDEMARK_FAULT_SEED (fault-injecting
#   store), TIDEMARK_CHANGED_SEED (incremental reconcile vs a full one, 100 cases).
# Takes about 1.5-2 hours on 2 cores. Logs and a summary go to ${SOAK_DIR:-target/soak}.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cargo/target-tidemark}"
export TIDEMARK_LONG=1
out="${SOAK_DIR:-$root/target/soak}"
mkdir -p "$out"
scripts/setup.sh

run() { # name, cargo test args...
  local name=$1; shift
  echo "soak: $name"
  local t0=$(date +%s)
  if cargo test --locked "$@" -- --nocapture --test-threads=1 >"$out/$name.log" 2>&1; then
    echo "soak: $name ok ($(( $(date +%s) - t0 ))s)"
  else
    echo "soak: $name FAILED ($(( $(date +%s) - t0 ))s); see $out/$name.log" >&2
    grep -E 'seed|panicked' "$out/$name.log" | head -5 >&2
    exit 1
  fi
  grep -E '^(seed|case seed|crash loop seed|killed|writes|applies|(Delta|Postgres): (killed|windows))' "$out/$name.log" \
    | sed "s/^/soak:   /" || true
}

run crash_loop -p tidemark-cli --test stream_crash
run crash_failpoints -p tidemark-cli --features failpoints --test crash_failpoints
run changed_equality -p tidemark-cli --test reconcile_changed
run store_faults -p tidemark-tests --test integration faults
run hostile -p tidemark-tests --test integration hostile
FUZZ_SECONDS="${FUZZ_SECONDS:-600}" scripts/fuzz.sh | tee "$out/fuzz.log"
echo "soak: all passed; logs in $out"
