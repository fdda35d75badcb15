#!/usr/bin/env bash
# The README's Kafka walkthrough as a backlog, measured (issue 24, docs/benchmarks.md): a tansu broker on a
# free port, a 4-partition topic, `tidemark gen --to kafka` (the whole stream before the service starts),
# `tidemark stream` with examples/pageviews.toml stopped by SIGTERM after WAIT seconds, then batch and a dry
# reconcile of the day. Prints the stream's accounting and the reconcile causes.
#   scripts/kafka-backlog.sh [BINARY] [EVENTS] [WAIT]   (defaults: target/release/tidemark, 200000, 150)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-$HOME/.cargo/target-tidemark}/release/tidemark}
events=${2:-200000}
wait_s=${3:-150}
tansu=${TIDEMARK_TANSU:-$HOME/.cargo/tansu-0.6.0/bin/tansu}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
d=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$d"' EXIT
"$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"$d/tansu.log" 2>&1 &
sleep 2
"$tansu" topic create --broker "tcp://127.0.0.1:$port" --partitions 4 pageviews >/dev/null
"$bin" gen --to kafka --brokers "127.0.0.1:$port" --topic pageviews --events "$events" --seed 3 --json >"$d/gen.json"
sed -e "s|^brokers = .*|brokers = \"127.0.0.1:$port\"|" -e "s|\"data/|\"$d/|" examples/pageviews.toml >"$d/spec.toml"
"$bin" stream --spec "$d/spec.toml" --listen off >/dev/null 2>"$d/stream.log" &
stream=$!
sleep "$wait_s"
kill -TERM "$stream"
wait "$stream"
grep "since the pipeline began" "$d/stream.log"
python3 -c "import json; s=json.load(open('$d/gen.json'))['stats']; print('generated:', s)"
"$bin" batch --spec "$d/spec.toml" --from 2026-01-01T00:00:00Z --to 2026-01-02T00:00:00Z >/dev/null 2>&1
"$bin" reconcile --spec "$d/spec.toml" --from 2026-01-01T00:00:00Z --to 2026-01-02T00:00:00Z --json --dry-run \
  >"$d/reconcile.json" 2>/dev/null
python3 -c "import json; r=json.load(open('$d/reconcile.json')); print('differences', r['differences'], 'causes', r['causes'])"
