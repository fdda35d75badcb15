"""DuckDB side of the batch benchmark: the same three metrics over the same de-duplicated events.

Usage:
    TIDEMARK_BENCH_PARQUET=/tmp/bench-events.parquet cargo bench -p tidemark-batch --bench plan
    python3 batch/benches/duckdb_compare.py /tmp/bench-events.parquet

Columns (see tidemark_batch::frame): event_id, event_time (µs), dim0 (user), val0 (bytes, float),
val1 (latency, int). Events are loaded into an in-memory table first (the polars side also starts from an
in-memory frame); each query's result is materialized into a temporary table. Threads: as many as cores.
"""

import resource
import sys
import time

import duckdb

MIN = 60_000_000

QUERIES = {
    "tumbling_1m": f"""
        SELECT event_time - ((event_time % {MIN}) + {MIN}) % {MIN} AS window_start, dim0,
               count(*) AS n, sum(val1) AS s, min(val1) AS mn, max(val1) AS mx, avg(val1) AS mean, sum(val0) AS bytes
        FROM events GROUP BY ALL""",
    "hopping_5m_1m": f"""
        SELECT pane - k * {MIN} AS window_start, dim0,
               count(*) AS n, sum(val1) AS s, min(val1) AS mn, max(val1) AS mx, avg(val1) AS mean, sum(val0) AS bytes
        FROM (SELECT *, event_time - ((event_time % {MIN}) + {MIN}) % {MIN} AS pane FROM events), range(5) r(k)
        GROUP BY ALL""",
    "session_30s": """
        WITH flagged AS (
            SELECT *, CASE WHEN event_time - lag(event_time) OVER w >= 30000000 OR lag(event_time) OVER w IS NULL
                           THEN 1 ELSE 0 END AS starts
            FROM events WINDOW w AS (PARTITION BY dim0 ORDER BY event_time)),
        numbered AS (SELECT *, sum(starts) OVER (PARTITION BY dim0 ORDER BY event_time
                                                 ROWS UNBOUNDED PRECEDING) AS sid FROM flagged)
        SELECT dim0, sid, min(event_time) AS window_start, max(event_time) + 30000000 AS window_end,
               count(*) AS n, sum(val1) AS s, min(val1) AS mn, max(val1) AS mx, avg(val1) AS mean, sum(val0) AS bytes
        FROM numbered GROUP BY ALL""",
}


def main() -> None:
    path = sys.argv[1]
    con = duckdb.connect()
    con.execute(f"CREATE TABLE events AS SELECT * FROM read_parquet('{path}')")
    n = con.execute("SELECT count(*) FROM events").fetchone()[0]
    print(f"duckdb {duckdb.__version__}, {n} events")
    total = 0.0
    for name, q in QUERIES.items():
        t = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TEMP TABLE result AS {q}")
        d = time.perf_counter() - t
        total += d
        rows = con.execute("SELECT count(*) FROM result").fetchone()[0]
        print(f"{name:<16} {n / d:>12.0f} events/s  {d:>8.2f} s  {rows} rows")
    print(f"{'all':<16} {n / total:>12.0f} events/s  {total:>8.2f} s")
    print(f"peak RSS (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
