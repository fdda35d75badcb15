# A throwaway Postgres serving store for scripts/bench-reconcile.sh --serving postgres (sourced, not run).
#
#   pg_start ROOT        initdb ROOT/data on first use, start the server (Unix socket in ROOT only), set PG_DSN
#                        (database bench) and an EXIT trap that stops the server
#   pg_sql STMT...       run each statement in the `postgres` database (each in its own transaction)
#   pg_measure LABEL FILE COMMAND...
#                        run COMMAND, print and append to FILE (JSON lines) the server's CPU seconds meanwhile
#   pg_cpu_table PY RESULTS FILE LABELS   tidemark CPU (measure.py) beside the server's, per step
#   pg_sizes, pg_describe
#
# The binaries are the Debian ones (/usr/lib/postgresql/15/bin, or $TIDEMARK_PG_BIN). initdb refuses to run
# as root, so as root every server command runs as the postgres user (runuser), as store/src/testing.rs does;
# clients (psql, tidemark) connect as the database user postgres over the socket with trust authentication.

PG_BIN="${TIDEMARK_PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_PORT=5432  # only names the socket file (.s.PGSQL.5432 in the socket dir): no TCP port is opened
# Settings for this 24 GiB / 2-core machine. Durability stays at Postgres' defaults (fsync, synchronous_commit
# and full_page_writes on: every commit of the stream's flushes and of the correction batches waits for its WAL
# flush, as a production serving store would); note that Delta on local files (object_store's LocalFileSystem)
# does not fsync at all, so for a like-for-like CPU comparison set
# TIDEMARK_BENCH_PG_SETTINGS="fsync=off synchronous_commit=off full_page_writes=off".
# max_wal_size 4GB: few checkpoints during the stream and the correction MERGEs, yet little disk (pg_wal holds
# about that much; the databases bench and pristine take ~500 MB each per 200k events, ~8 GB each at 10M).
PG_SETTINGS=(
  shared_buffers=2GB
  effective_cache_size=12GB
  work_mem=64MB
  maintenance_work_mem=1GB
  max_wal_size=4GB
  min_wal_size=1GB
  checkpoint_timeout=15min
  checkpoint_completion_target=0.9
  random_page_cost=1.1
  max_connections=100
)
# shellcheck disable=SC2206  # words on purpose: "a=b c=d"
PG_SETTINGS+=(${TIDEMARK_BENCH_PG_SETTINGS:-})

pg_as_server_user() {
  if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_start() {
  PG_ROOT="$1"
  PG_DATA="$PG_ROOT/data"
  [[ -x "$PG_BIN/initdb" ]] || { echo "no Postgres binaries in $PG_BIN (apt-get install postgresql-15, or TIDEMARK_PG_BIN)" >&2; exit 2; }
  mkdir -p "$PG_ROOT"
  if [[ "$(id -u)" == 0 ]]; then chown postgres: "$PG_ROOT"; fi
  # a Unix socket path is limited to 107 bytes: with a long ROOT the socket goes to a temp dir instead
  PG_SOCK="$PG_ROOT"
  PG_SOCK_TMP=""
  if (( ${#PG_SOCK} + ${#PG_PORT} + 10 > 107 )); then
    PG_SOCK_TMP="$(mktemp -d /tmp/tidemark-bench-pg.XXXXXX)"
    PG_SOCK="$PG_SOCK_TMP"
    if [[ "$(id -u)" == 0 ]]; then chown postgres: "$PG_SOCK"; fi
  fi
  if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    rm -rf "$PG_DATA"
    pg_as_server_user "$PG_BIN/initdb" -D "$PG_DATA" -A trust -U postgres --no-sync -E UTF8 > "$PG_ROOT/initdb.log" 2>&1 \
      || { cat "$PG_ROOT/initdb.log" >&2; exit 1; }
  fi
  if pg_as_server_user "$PG_BIN/pg_ctl" -D "$PG_DATA" status > /dev/null 2>&1; then
    echo "a server of an earlier run still runs on $PG_DATA: stopping it" >&2
    pg_as_server_user "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop > /dev/null
  fi
  local opts="-k '$PG_SOCK' -p $PG_PORT -c listen_addresses=''" s
  for s in "${PG_SETTINGS[@]}"; do opts+=" -c $s"; done
  trap pg_stop EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  pg_as_server_user "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_ROOT/server.log" -o "$opts" -w -t 300 start > /dev/null \
    || { tail -20 "$PG_ROOT/server.log" >&2; exit 1; }
  # the socket dir as the URL's host, percent-encoded (tokio-postgres: a host starting with / is a socket dir)
  PG_DSN="postgres://postgres@$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$PG_SOCK"):$PG_PORT/bench"
}

pg_stop() {
  if [[ -n "${PG_DATA:-}" ]]; then
    pg_as_server_user "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop > /dev/null 2>&1 || true
  fi
  if [[ -n "${PG_SOCK_TMP:-}" ]]; then rm -rf "$PG_SOCK_TMP"; fi
}

pg_psql() { # pg_psql DB [psql args]
  local db="$1"; shift
  PGOPTIONS="-c client_min_messages=warning" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d "$db" "$@"
}

pg_sql() {
  local args=() s
  for s in "$@"; do args+=(-c "$s"); done
  pg_psql postgres "${args[@]}"
}

pg_sizes() {
  pg_psql postgres -At -c "SELECT string_agg(datname || ' ' || pg_size_pretty(pg_database_size(datname)), ', ' ORDER BY datname)
                           FROM pg_database WHERE datname IN ('bench', 'pristine')" | tr -d '\n'
  printf ', WAL %s' "$(du -sh "$PG_DATA/pg_wal" 2>/dev/null | cut -f1)"
}

pg_describe() {
  echo "$("$PG_BIN/postgres" --version), socket in $PG_SOCK, data $PG_DATA (log: $PG_ROOT/server.log), ${PG_SETTINGS[*]}"
}

# CPU seconds of the server so far: user+sys of the postmaster, of its live children (backends, checkpointer,
# walwriter, autovacuum...) and of its exited children (the postmaster waits for each, so the kernel adds
# their time to its cutime/cstime). Limitations: a child that exits between reading the postmaster's stat and
# its own is missed, and work a step leaves behind (dirty buffers written by the next checkpoint, autovacuum
# of the rows it changed) is counted in the step during which it runs, or in none; 10 ms resolution.
pg_cpu() {
  local pm files=()
  pm="$(head -1 "$PG_DATA/postmaster.pid")"
  files=("/proc/$pm/stat")
  local c
  for c in $(cat /proc/"$pm"/task/*/children 2>/dev/null); do files+=("/proc/$c/stat"); done
  # after "pid (comm) " the fields are state ppid ...: utime stime cutime cstime are the 12th .. 15th
  cat "${files[@]}" 2>/dev/null \
    | awk -v tck="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); t += $12 + $13 + $14 + $15 } END { printf "%.2f\n", t / tck }'
}

pg_measure() {
  local label="$1" file="$2" before after rc=0
  shift 2
  before="$(pg_cpu)"
  "$@" || rc=$?
  sleep 0.2  # the backends of the command's connections exit just after it
  after="$(pg_cpu)"
  local used
  used="$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.2f", a - b }')"
  echo "  $label: postgres server $used s CPU" >&2
  printf '{"label": "%s", "server_cpu_s": %s, "date": "%s"}\n' "$label" "$used" "$(date +%FT%T%z)" >> "$file"
  return $rc
}

pg_cpu_table() { # pg_cpu_table PY RESULTS PG_CPU_FILE LABELS
  "$1" - "$2" "$3" "$4" <<'EOF'
import json, sys
def latest(path):
    out = {}
    try:
        for line in open(path):
            if line.strip():
                r = json.loads(line)
                out[r["label"]] = r
    except FileNotFoundError:
        pass
    return out
steps, server = latest(sys.argv[1]), latest(sys.argv[2])
print("CPU split (latest run of each step): tidemark = the command and its children (measure.py), server = "
      "the Postgres processes meanwhile")
print(f"{'step':<14} {'wall s':>8} {'tidemark':>9} {'server':>8} {'total':>8}")
for label in sys.argv[3].split(","):
    r, p = steps.get(label), server.get(label)
    if r is None:
        continue
    s = p["server_cpu_s"] if p else None
    total = f"{r['cpu_s'] + s:>8.1f}" if s is not None else f"{'':>8}"
    print(f"{label:<14} {r['wall_s']:>8.1f} {r['cpu_s']:>9.1f} {s if s is not None else float('nan'):>8.1f} {total}")
EOF
}
