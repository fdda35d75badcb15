#!/usr/bin/env bash
# Issue 19's incremental check: what `tidemark reconcile --changed` costs after an hour's worth of new
# arrivals, against the full-day batch + reconcile it replaces.
#
#   scripts/bench-incremental.sh --from DIR [--hour H] [--late-share S] [--replay N] [--bin PATH]
#
#   --from DIR       a data directory scripts/bench-reconcile.sh made (gen, stream and batch of one day done).
#                    The run works on a copy at the same path (the file source's committed offsets name the
#                    file's path): DIR is moved aside, hard-linked back (the stores only ever add files;
#                    events.jsonl is a real copy, it is appended to), and restored when the run ends; results
#                    and logs go to DIR/incremental/
#   --hour H         the hour of event time (UTC, 0-23) whose late views arrive (default 12)
#   --late-share S   late views as a share of that hour's views (default 0.01): copies of the hour's views
#                    with new ids, arriving after the day
#   --replay N       lines replayed (default 10000): a contiguous run of earlier arrivals, from the middle of
#                    the file, delivered again (duplicate deliveries, like a consumer rewinding)
#   --bin PATH       the tidemark binary (default $TIDEMARK_BIN or ~/.cargo/target-tidemark/release/tidemark)
#
# Steps, measured like bench-reconcile.sh's (wall, CPU, peak RSS; results in DIR/incremental/results.jsonl):
#   full         reconcile --changed, first run: covers the whole archive (batch of every hour with events +
#                reconcile), which is what a full-day batch + reconcile costs
#   stream       tidemark stream --finish over the new lines (the late views and the replay)
#   incremental  reconcile --changed: only the hours the new lines can touch
#   check        a full batch + reconcile --dry-run of the day: must find 0 differences
set -euo pipefail

SRC=""
HOUR=12
LATE_SHARE=0.01
REPLAY=10000
BIN="${TIDEMARK_BIN:-$HOME/.cargo/target-tidemark/release/tidemark}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --from) SRC="$2"; shift 2 ;;
    --hour) HOUR="$2"; shift 2 ;;
    --late-share) LATE_SHARE="$2"; shift 2 ;;
    --replay) REPLAY="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$SRC" && -f "$SRC/.batch.done" && -f "$SRC/.day" ]] || { echo "--from: a bench-reconcile.sh data directory" >&2; exit 2; }
[[ "$HOUR" =~ ^[0-9]+$ && "$HOUR" -lt 24 ]] || { echo "--hour must be 0-23" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${TIDEMARK_BENCH_VENV:-$HOME/.cache/tidemark/bench-venv}/bin/python"
[[ -x "$PY" ]] || { echo "no bench venv: run scripts/bench-reconcile.sh first" >&2; exit 2; }
DAY="$(cat "$SRC/.day")"
FROM="${DAY}T00:00:00Z"
TO="$(date -u -d "$DAY + 1 day" +%F)T00:00:00Z"
SRC="${SRC%/}"
ORIG="$SRC.orig-$$"

# a copy of the directory at its own path, as the stream and batch left it (the serving store before any
# reconcile), restored however the run ends
mv "$SRC" "$ORIG"
trap 'rm -rf "$SRC"; mv "$ORIG" "$SRC"' EXIT
mkdir -p "$SRC"
for f in raw dead_letter batch spec.toml spec.json .day; do cp -al "$ORIG/$f" "$SRC/$f"; done
cp -al "$ORIG/serving.pristine" "$SRC/serving"
cp "$ORIG/events.jsonl" "$SRC/events.jsonl"
DIR="$SRC"
# results and logs go into the original (kept) directory
OUT="$ORIG/incremental"
RESULTS="$OUT/results.jsonl"
rm -rf "$OUT"
mkdir -p "$OUT/logs"
measure() { # measure LABEL [measure.py options] -- COMMAND...
  local label="$1"; shift
  "$PY" "$HERE/bench/measure.py" run --label "$label" --results "$RESULTS" "$@"
}
echo "incremental reconcile: $DIR ($("$BIN" --version)), hour $HOUR, late share $LATE_SHARE, replay $REPLAY" >&2
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

measure full --outcome reconcile --stdout "$OUT/logs/full.json" --stderr "$OUT/logs/full.log" -- \
  "$BIN" reconcile --spec "$DIR/spec.toml" --changed --json

# the new lines: late copies of the hour's views (new ids, arriving after the day) and a replayed run of lines
"$PY" - "$DIR/events.jsonl" "$DAY" "$HOUR" "$LATE_SHARE" "$REPLAY" "$TO" > "$OUT/new.jsonl" <<'EOF'
import json, sys
path, day, hour, share, replay, day_end = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
prefix = f'"ts":"{day}T{hour:02d}:'
with open(path) as f:
    lines = f.readlines()
hour_lines = [l for l in lines if prefix in l]
step = max(1, round(1 / share)) if share > 0 else 0
late = hour_lines[::step] if step else []
for i, l in enumerate(late):
    e = json.loads(l)
    e["event_id"] = f"late-{e['event_id']}"
    s, ms = divmod(i, 1000)
    e["received_at"] = f"{day_end[:10]}T00:{5 + s // 60:02d}:{s % 60:02d}.{ms:03d}Z"
    sys.stdout.write(json.dumps(e, separators=(",", ":")) + "\n")
mid = len(lines) // 2
sys.stdout.writelines(lines[mid:mid + replay])
print(f"{len(late)} late views of hour {hour} ({len(hour_lines)} views), {min(replay, len(lines) - mid)} replayed lines",
      file=sys.stderr)
EOF
NEW=$(wc -l < "$OUT/new.jsonl")
cat "$OUT/new.jsonl" >> "$DIR/events.jsonl"
measure stream --stdout "$OUT/logs/stream.out" --stderr "$OUT/logs/stream.log" -- \
  "$BIN" stream --spec "$DIR/spec.toml" --finish --listen off
measure incremental --outcome reconcile --stdout "$OUT/logs/incremental.json" --stderr "$OUT/logs/incremental.log" -- \
  "$BIN" reconcile --spec "$DIR/spec.toml" --changed --json
status=0
"$BIN" batch --spec "$DIR/spec.toml" --from "$FROM" --to "$TO" > "$OUT/logs/check-batch.out" 2>&1
measure check --outcome reconcile --stdout "$OUT/logs/check.json" --stderr "$OUT/logs/check.log" -- \
  "$BIN" reconcile --spec "$DIR/spec.toml" --from "$FROM" --to "$TO" --dry-run --json || status=1

echo
echo "$NEW new lines; results in $SRC/incremental/results.jsonl"
"$PY" "$HERE/bench/measure.py" table --results "$RESULTS" --labels full,stream,incremental,check
"$PY" - "$OUT/logs/incremental.json" "$OUT/logs/check.json" "$RESULTS" <<'EOF' || status=1
import json, sys
inc, check = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
rec = {}
for line in open(sys.argv[3]):
    r = json.loads(line)
    rec[r["label"]] = r
spans = inc.get("spans", [])
print(f"incremental: {inc.get('new_arrivals')} new arrivals, spans {[(s['from'], s['to']) for s in spans]}")
print(f"incremental / full: wall {rec['incremental']['wall_s'] / rec['full']['wall_s']:.1%}, "
      f"CPU {rec['incremental']['cpu_s'] / rec['full']['cpu_s']:.1%}")
print(f"check (full batch + reconcile of the day afterwards): {check['differences']} differences")
sys.exit(0 if check["differences"] == 0 else 1)
EOF
exit $status
