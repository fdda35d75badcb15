#!/usr/bin/env bash
# The test command: sets up what the tests need on this machine, then runs every test of the workspace.
# Integration tests start their own servers (Postgres from the Debian binaries, ...) on loopback / Unix
# sockets and stop them when they finish.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cargo/target-tidemark}"
scripts/setup.sh
# `failpoints` compiles the named fail points in (docs/reliability.md): the crash loop needs them; they do
# nothing unless FAILPOINTS or TIDEMARK_FAILPOINT_MARKS configures them.
cargo test --workspace --locked --no-fail-fast --features tidemark-cli/failpoints "$@"
