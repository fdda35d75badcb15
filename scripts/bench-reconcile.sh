#!/usr/bin/env bash
# Issue 19's whole-command benchmark: `tidemark reconcile` of a generated one-day pipeline, with a DuckDB
# full-outer-join diff of the same two Delta tables run beside it. Numbers go in docs/benchmarks.md.
#
#   scripts/bench-reconcile.sh [--events N] [--days D | --day-of DIR2] [--dir DIR] [--fresh] [--bin PATH]
#                              [--max-rss-gib G] [--threads T] [--serving delta|postgres]
#
#   --events N       distinct page views per day (default 10000000); rate = N / 86400 views/s of event time
#   --days D         generate D days from 2026-01-01 (default 1) and reconcile the middle one (day D/2, 0-based):
#                    with --days 30 the raw archive, serving store and late ledger hold 30 days, the batch view
#                    and every measured step one (issue 19's "cost follows the range" check)
#   --day-of DIR2    the 1-day baseline of DIR2 (a --days run): events.jsonl is the views of DIR2's reconciled
#                    day (by event time) and that day is reconciled, so the two runs differ only in history
#   --dir DIR        data directory (default ${TIDEMARK_BENCH_DATA:-/work/bench-data}/N, N-Dd for --days D,
#                    N-day-of-<DIR2 name> for --day-of; with --serving postgres the same plus -pg); reused
#   --fresh          delete DIR's data and regenerate (default: gen/stream/batch run only when not done yet)
#   --bin PATH       the tidemark binary (default $TIDEMARK_BIN or ~/.cargo/target-tidemark/release/tidemark;
#                    build it first: cargo build --release -p tidemark-cli)
#   --max-rss-gib G  kill a step whose resident memory exceeds G GiB (default 20: the machine has 24 GiB) and
#                    record it as killed; a step is also killed when MemAvailable drops under 1 GiB
#   --threads T      DuckDB threads (default: all cores)
#   --serving S      where the serving store lives: delta (default, DIR/serving) or postgres: a throwaway
#                    Postgres 15 (/usr/lib/postgresql/15/bin, or $TIDEMARK_PG_BIN) with its data in DIR/pg,
#                    listening only on a Unix socket there, started by this script and stopped when it exits
#                    (as root it runs as the postgres user); database `bench`, schema tidemark. Raw archive,
#                    dead letters and batch view stay Delta. The Delta dir of the same N is never touched, but
#                    its events.jsonl is hard-linked when generated. The DuckDB steps are skipped (DuckDB's
#                    postgres extension is not installed and is not downloaded); each step also records the
#                    server's CPU seconds (DIR/pg-cpu.jsonl). Extra server settings: $TIDEMARK_BENCH_PG_SETTINGS
#                    (e.g. "fsync=off synchronous_commit=off": Delta on local files does not fsync either).
#                    Disk: the databases bench and pristine take ~500 MB each per 200k events, plus up to 4 GB WAL
#
# Steps, each measured by scripts/bench/measure.py (wall, user+sys CPU, peak RSS from wait4):
#   gen        tidemark gen: one day (2026-01-01) of N views, 10k Zipf users, 1% late by 30 s .. 10 min,
#              0.1% duplicate deliveries, no malformed lines, seed 7 -> DIR/events.jsonl
#   stream     tidemark stream --finish over that file (arrival order) -> raw archive, serving, late ledger
#   batch      tidemark batch of the day -> batch view
#   (then DIR/serving is copied to DIR/serving.pristine, and every later run starts from a fresh copy of it, so
#    reruns see the same uncorrected serving store; the copies are hard links, free of disk space: Delta never
#    changes a file in place, a commit only adds files. Postgres: VACUUM (ANALYZE) of bench, as autovacuum would
#    have done during a day, then CREATE DATABASE pristine TEMPLATE bench; before reconcile1 bench is dropped
#    and re-created from pristine)
#   reconcile1 tidemark reconcile of the day: finds and corrects the differences the stream left
#   duckdb1    the DuckDB diff of the serving table at the version reconcile1 started from (same state)
#   reconcile2 tidemark reconcile again: nothing to correct
#   duckdb2    the DuckDB diff of the corrected serving table (expect 0 differences)
#   backfill   tidemark backfill of the day (one chunk: batch + reconcile; nothing left to correct)
# Results: DIR/results.jsonl (one JSON object per step and run), the table on stdout, logs in DIR/logs/.
set -euo pipefail

EVENTS=10000000
DAYS=1
DAY_OF=""
DIR=""
FRESH=0
BIN="${TIDEMARK_BIN:-$HOME/.cargo/target-tidemark/release/tidemark}"
MAX_RSS_GIB=20
THREADS=""
SERVING=delta
while [[ $# -gt 0 ]]; do
  case "$1" in
    --events) EVENTS="$2"; shift 2 ;;
    --days) DAYS="$2"; shift 2 ;;
    --day-of) DAY_OF="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --fresh) FRESH=1; shift ;;
    --bin) BIN="$2"; shift 2 ;;
    --max-rss-gib) MAX_RSS_GIB="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --serving) SERVING="$2"; shift 2 ;;
    -h|--help) sed -n '2,48p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$EVENTS" =~ ^[0-9]+$ && "$EVENTS" -gt 0 ]] || { echo "--events must be a positive integer" >&2; exit 2; }
[[ "$DAYS" =~ ^[0-9]+$ && "$DAYS" -gt 0 ]] || { echo "--days must be a positive integer" >&2; exit 2; }
[[ -z "$DAY_OF" || "$DAYS" -eq 1 ]] || { echo "--day-of and --days exclude each other" >&2; exit 2; }
[[ "$SERVING" == delta || "$SERVING" == postgres ]] || { echo "--serving must be delta or postgres" >&2; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BASE="${TIDEMARK_BENCH_DATA:-/work/bench-data}"
if [[ -n "$DAY_OF" ]]; then
  [[ -f "$DAY_OF/events.jsonl" && -f "$DAY_OF/.day" ]] || { echo "--day-of $DAY_OF: no generated --days run there" >&2; exit 2; }
  DAY="$(cat "$DAY_OF/.day")"
  DELTA_DIR="$BASE/$EVENTS-day-of-$(basename "$DAY_OF")"
elif [[ "$DAYS" -gt 1 ]]; then
  DAY="$(date -u -d "2026-01-01 + $((DAYS / 2)) days" +%F)"
  DELTA_DIR="$BASE/$EVENTS-${DAYS}d"
else
  DAY=2026-01-01
  DELTA_DIR="$BASE/$EVENTS"
fi
# the Delta flow's default directory; the Postgres flow's gets a suffix so the two never mix
if [[ "$SERVING" == postgres ]]; then DIR="${DIR:-$DELTA_DIR-pg}"; else DIR="${DIR:-$DELTA_DIR}"; fi
VENV="${TIDEMARK_BENCH_VENV:-$HOME/.cache/tidemark/bench-venv}"
FROM="${DAY}T00:00:00Z"
TO="$(date -u -d "$DAY + 1 day" +%F)T00:00:00Z"

[[ -x "$BIN" ]] || { echo "no tidemark binary at $BIN (cargo build --release -p tidemark-cli, or --bin)" >&2; exit 2; }

# The Python side: a venv with pinned versions (pip only; nothing else is downloaded).
PY_PINS=(duckdb==2.0.1 deltalake==1.6.6 pyarrow==26.0.1)
if ! "$VENV/bin/python" -c 'import duckdb, deltalake, pyarrow' 2>/dev/null; then
  echo "creating $VENV (${PY_PINS[*]})" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "${PY_PINS[@]}"
fi
PY="$VENV/bin/python"

# the two flows never share a directory (checked before --fresh, so it cannot delete the other flow's data)
if [[ "$SERVING" == postgres && ( -e "$DIR/serving" || -e "$DIR/serving.pristine" ) ]]; then
  echo "$DIR holds a Delta serving store: use another --dir for --serving postgres" >&2; exit 2
fi
if [[ "$SERVING" == delta && -e "$DIR/pg" ]]; then
  echo "$DIR holds a Postgres benchmark (DIR/pg): use another --dir for --serving delta" >&2; exit 2
fi
if [[ $FRESH -eq 1 && -d "$DIR" ]]; then
  [[ -f "$DIR/spec.toml" || -z "$(ls -A "$DIR")" ]] || { echo "$DIR is not a bench data directory: not deleting it" >&2; exit 2; }
  if [[ -f "$DIR/pg/data/postmaster.pid" ]]; then  # a server an earlier run left running (killed with SIGKILL)
    # shellcheck source=bench/postgres.sh
    source "$HERE/bench/postgres.sh"
    pg_as_server_user "$PG_BIN/pg_ctl" -D "$DIR/pg/data" -m fast -w stop > /dev/null 2>&1 || true
  fi
  rm -rf "$DIR"
fi
mkdir -p "$DIR/logs"
cp "$HERE/bench/reconcile-day.toml" "$DIR/spec.toml"
if [[ "$SERVING" == postgres ]]; then
  # shellcheck source=bench/postgres.sh
  source "$HERE/bench/postgres.sh"
  pg_start "$DIR/pg"  # sets PG_DSN (database bench); stopped by an EXIT trap
  sed -i "s|^serving = \"serving\"\$|serving = \"$PG_DSN\"|" "$DIR/spec.toml"
  grep -qF "serving = \"$PG_DSN\"" "$DIR/spec.toml" || { echo "could not point $DIR/spec.toml at Postgres" >&2; exit 1; }
fi
"$BIN" validate --spec "$DIR/spec.toml" --format json > "$DIR/spec.json"
RESULTS="$DIR/results.jsonl"
RATE="$("$PY" -c "print(repr($EVENTS / 86400))")"

measure() { # measure LABEL [measure.py options] -- COMMAND...
  local label="$1"; shift
  if [[ "$SERVING" == postgres ]]; then
    pg_measure "$label" "$DIR/pg-cpu.jsonl" \
      "$PY" "$HERE/bench/measure.py" run --label "$label" --results "$RESULTS" --max-rss-gib "$MAX_RSS_GIB" "$@"
  else
    "$PY" "$HERE/bench/measure.py" run --label "$label" --results "$RESULTS" --max-rss-gib "$MAX_RSS_GIB" "$@"
  fi
}

echo "tidemark reconcile benchmark: $EVENTS events per day, $DAYS day(s)${DAY_OF:+ (the day $DAY of $DAY_OF)}, reconciling $DAY, $DIR, $("$BIN" --version) ($BIN, built $(date -r "$BIN" -u +%FT%TZ))" >&2
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
if [[ "$SERVING" == postgres ]]; then echo "serving store: $(pg_describe)" >&2; fi

if [[ "$SERVING" == postgres && ! -f "$DIR/.gen.done" && "$DIR" != "$DELTA_DIR" \
      && -f "$DELTA_DIR/.gen.done" && -f "$DELTA_DIR/events.jsonl" ]]; then
  # the same events as the Delta flow's (same command and seed), without generating them again
  rm -f "$DIR/events.jsonl"
  if ln "$DELTA_DIR/events.jsonl" "$DIR/events.jsonl"; then
    echo "events.jsonl: hard link to $DELTA_DIR/events.jsonl (no gen step)" >&2
    touch "$DIR/.gen.done"
  fi
fi

echo "$DAY" > "$DIR/.day"
if [[ ! -f "$DIR/.gen.done" ]]; then
  if [[ -n "$DAY_OF" ]]; then
    # the views of that day in arrival order (duplicates included; the late views of the day before, which
    # arrive on this day, are not: they are not this day's)
    grep -F "\"ts\":\"$DAY" "$DAY_OF/events.jsonl" > "$DIR/events.jsonl"
  else
    measure gen --stdout "$DIR/logs/gen.json" --stderr "$DIR/logs/gen.log" -- \
      "$BIN" gen --to file --out "$DIR/events.jsonl" --events "$((EVENTS * DAYS))" --seed 7 --rate "$RATE" \
        --start 2026-01-01T00:00:00Z --disorder 3s --late-share 0.01 --late-min 30s --late-max 10m \
        --duplicate-share 0.001 --malformed-share 0 --users 10000 --json
  fi
  touch "$DIR/.gen.done"
fi
if [[ ! -f "$DIR/.stream.done" ]]; then
  rm -rf "$DIR/raw" "$DIR/serving" "$DIR/serving.pristine" "$DIR/dead_letter" "$DIR/batch" "$DIR/.batch.done"
  if [[ "$SERVING" == postgres ]]; then
    pg_sql "DROP DATABASE IF EXISTS bench" "DROP DATABASE IF EXISTS pristine" "CREATE DATABASE bench"
  fi
  measure stream --stdout "$DIR/logs/stream.out" --stderr "$DIR/logs/stream.log" -- \
    "$BIN" stream --spec "$DIR/spec.toml" --finish --listen off
  touch "$DIR/.stream.done"
fi
if [[ ! -f "$DIR/.batch.done" ]]; then
  rm -rf "$DIR/batch"
  measure batch --stdout "$DIR/logs/batch.out" --stderr "$DIR/logs/batch.log" -- \
    "$BIN" batch --spec "$DIR/spec.toml" --from "$FROM" --to "$TO"
  if [[ "$SERVING" == postgres ]]; then
    # statistics and visibility map as autovacuum keeps them on a store that has run for a day (whether it got to
    # the new rows before the stream finished is chance), so every reconcile1 plans from the same statistics
    pg_psql bench -c "VACUUM (ANALYZE)"
    # no connection is open now (the stream has finished), as CREATE DATABASE ... TEMPLATE requires
    pg_sql "DROP DATABASE IF EXISTS pristine" "CREATE DATABASE pristine TEMPLATE bench STRATEGY FILE_COPY"
  else
    rm -rf "$DIR/serving.pristine"
    cp -al "$DIR/serving" "$DIR/serving.pristine"
  fi
  touch "$DIR/.batch.done"
fi

# Every run starts from the serving store as the stream left it (hard links: Delta only adds files).
rm -rf "$DIR"/report-*
if [[ "$SERVING" == postgres ]]; then
  pg_sql "DROP DATABASE IF EXISTS bench" "CREATE DATABASE bench TEMPLATE pristine STRATEGY FILE_COPY"
  echo "serving databases: $(pg_sizes)" >&2
else
  rm -rf "$DIR/serving"
  cp -al "$DIR/serving.pristine" "$DIR/serving"
  V0="$("$PY" -c "from deltalake import DeltaTable; print(DeltaTable('$DIR/serving/serving').version())")"
fi
DUCK=("$PY" "$HERE/bench/duckdb_diff.py" --spec-json "$DIR/spec.json" --from "$FROM" --to "$TO" --json)
[[ -n "$THREADS" ]] && DUCK+=(--threads "$THREADS")
# duckdb_diff.py reads the serving Delta table; DuckDB's postgres extension is not installed here and is not
# downloaded, so the Postgres flow has no DuckDB steps
if [[ "$SERVING" == postgres ]]; then
  echo "duckdb1/duckdb2 skipped: duckdb_diff.py reads Delta tables only (DuckDB's postgres extension is not available offline)" >&2
fi

status=0
measure reconcile1 --outcome reconcile --stdout "$DIR/logs/reconcile1.json" --stderr "$DIR/logs/reconcile1.log" -- \
  "$BIN" reconcile --spec "$DIR/spec.toml" --from "$FROM" --to "$TO" --json --report-dir "$DIR/report-1" || status=1
[[ "$SERVING" == postgres ]] || measure duckdb1 --outcome duckdb --stdout "$DIR/logs/duckdb1.json" --stderr "$DIR/logs/duckdb1.log" -- \
  "${DUCK[@]}" --serving-version "$V0" || status=1
measure reconcile2 --outcome reconcile --stdout "$DIR/logs/reconcile2.json" --stderr "$DIR/logs/reconcile2.log" -- \
  "$BIN" reconcile --spec "$DIR/spec.toml" --from "$FROM" --to "$TO" --json --report-dir "$DIR/report-2" || status=1
[[ "$SERVING" == postgres ]] || measure duckdb2 --outcome duckdb --stdout "$DIR/logs/duckdb2.json" --stderr "$DIR/logs/duckdb2.log" -- \
  "${DUCK[@]}" || status=1
rm -rf "$DIR/batch/_backfill"
measure backfill --stdout "$DIR/logs/backfill.json" --stderr "$DIR/logs/backfill.log" -- \
  "$BIN" backfill --spec "$DIR/spec.toml" --from "$FROM" --to "$TO" --json || status=1

echo
if [[ "$SERVING" == postgres ]]; then
  echo "$EVENTS events per day, $DAYS day(s), $DAY reconciled, serving in Postgres (database bench re-created from pristine before reconcile1; gen/stream/batch: latest recorded run; results in $RESULTS)"
  "$PY" "$HERE/bench/measure.py" table --results "$RESULTS" --labels gen,stream,batch,reconcile1,reconcile2,backfill
  echo
  pg_cpu_table "$PY" "$RESULTS" "$DIR/pg-cpu.jsonl" stream,batch,reconcile1,reconcile2,backfill
  echo "serving databases: $(pg_sizes)"
  echo "(no DuckDB steps: duckdb_diff.py reads Delta tables only and DuckDB's postgres extension is not available offline)"
  exit $status
fi
echo "$EVENTS events per day, $DAYS day(s), $DAY reconciled, serving v$V0 before reconcile1 (gen/stream/batch: latest recorded run; results in $RESULTS)"
"$PY" "$HERE/bench/measure.py" table --results "$RESULTS" --labels gen,stream,batch,reconcile1,duckdb1,reconcile2,duckdb2,backfill
"$PY" - "$DIR/logs/duckdb1.json" <<'EOF' || true
import json, sys
c = json.load(open(sys.argv[1]))["counts"]
print(f"first run: {c['differences']} of {c['checked']} window keys differ ({c['share_rows_differing']:.2%}); "
      f"{c['keys_differing']} of {c['keys']} dimension keys have a difference ({c['share_keys_differing']:.2%})")
EOF
exit $status
