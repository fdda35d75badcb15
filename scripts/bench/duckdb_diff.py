#!/usr/bin/env python3
"""A straightforward DuckDB diff of a tidemark serving store (Delta) against its batch view, for comparison
with `tidemark reconcile` (issue 19). Installs nothing: run it with a Python that has duckdb, deltalake and
pyarrow (scripts/bench-reconcile.sh makes such a venv).

    duckdb_diff.py --spec-json SPEC.json --from 2026-01-01T00:00:00Z --to 2026-01-02T00:00:00Z \
                   [--serving-version V] [--json]

SPEC.json is `tidemark validate --spec pipeline.toml --format json` (every default filled in: store URLs,
each aggregate's tolerance). Both tables are read with the deltalake package as Arrow datasets (pruned by the
partition columns) and scanned by DuckDB:
- serving: the serving table `<stores.serving>/serving`, records with kind = 'row' and not deleted, JSON
  aggregates in `agg_values` (optionally at Delta version V: the state a reconcile saw before correcting);
- batch: `<stores.batch_view>`, JSON aggregates in `values`;
both restricted to the spec's metrics and windows starting in [FROM, TO) (what the reconciler compares).
It full-outer-joins them on (metric, window_start, window_end, dims), parses every aggregate of the metric
from the JSON and compares it within the spec's tolerance with the reconciler's rule (null equals only null;
exact: integers equal as integers, otherwise as f64; abs(x): |a-b| <= x; rel(x): |a-b| <= x * max(|a|,|b|)),
and counts keys per verdict: missing_in_serving, unexpected_in_serving, value_drift, ok. It also counts the
distinct dimension keys (e.g. users) and how many of them have at least one differing window.
"""

import argparse
import json
import sys
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote, urlparse

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable


def local_path(url):
    u = urlparse(url)
    if u.scheme == "file":
        return unquote(u.path)
    if u.scheme == "":
        return url
    sys.exit(f"duckdb_diff.py reads local Delta tables only, not {url}")


def parse_time(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc)


def sql_str(s):
    return "'" + s.replace("'", "''") + "'"


def dates(from_, to):
    """UTC dates of window starts in [from_, to) (partition values)."""
    d, last = from_.date(), (to - timedelta(microseconds=1)).date()
    out = []
    while d <= last:
        out.append(d.isoformat())
        d += timedelta(days=1)
    return out


def compare_expr(x, y, tolerance):
    """SQL: aggregate values x and y (JSON text, NULL for null/missing) are equal within `tolerance`."""
    both_null = f"({x} IS NULL AND {y} IS NULL)"
    both_set = f"({x} IS NOT NULL AND {y} IS NOT NULL)"
    fx, fy = f"TRY_CAST({x} AS DOUBLE)", f"TRY_CAST({y} AS DOUBLE)"
    if tolerance == "exact":
        # equal JSON text (canonical integers); otherwise, unless both are integers, equal as f64
        ints = f"(regexp_full_match({x}, '-?[0-9]+') AND regexp_full_match({y}, '-?[0-9]+'))"
        return f"({x} IS NOT DISTINCT FROM {y} OR ({both_set} AND NOT {ints} AND {fx} = {fy}))"
    kind, _, rest = tolerance.partition("(")
    t = float(rest.rstrip(")"))
    if kind == "abs":
        return f"({both_null} OR ({both_set} AND abs({fx} - {fy}) <= {t!r}))"
    if kind == "rel":
        return f"({both_null} OR ({both_set} AND abs({fx} - {fy}) <= {t!r} * greatest(abs({fx}), abs({fy}))))"
    sys.exit(f"unknown tolerance {tolerance!r}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec-json", required=True, help="output of `tidemark validate --format json`")
    p.add_argument("--from", dest="from_", required=True, help="range start (RFC 3339, inclusive)")
    p.add_argument("--to", required=True, help="range end (RFC 3339, exclusive)")
    p.add_argument("--serving-version", type=int, help="read the serving table at this Delta version")
    p.add_argument("--threads", type=int, help="DuckDB threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args()
    t0 = time.perf_counter()

    with open(args.spec_json) as f:
        spec = json.load(f)
    from_, to = parse_time(args.from_), parse_time(args.to)
    metrics = {m["name"]: [(a["name"], a["tolerance"]) for a in m["aggregates"]] for m in spec["metrics"]}
    names = sorted({a for aggs in metrics.values() for a, _ in aggs})
    slot = {n: i + 1 for i, n in enumerate(names)}  # DuckDB lists are 1-based
    serving_path = local_path(spec["stores"]["serving"]).rstrip("/") + "/serving"
    batch_path = local_path(spec["stores"]["batch_view"])
    day_list = dates(from_, to)
    metric_list = sorted(metrics)

    serving = DeltaTable(serving_path, version=args.serving_version)
    batch = DeltaTable(batch_path)
    # Files pruned by partition values; rows filtered by the Arrow scanner (streamed into DuckDB as batches).
    ts = pa.timestamp("us", tz="UTC")
    in_range = (
        ds.field("metric").isin(metric_list)
        & (ds.field("window_start") >= pa.scalar(from_, type=ts))
        & (ds.field("window_start") < pa.scalar(to, type=ts))
    )
    serving_reader = (
        serving.to_pyarrow_dataset(file_pruning_predicate=[("metric", "in", metric_list), ("window_date", "in", day_list)])
        .scanner(
            columns=["metric", "window_start", "window_end", "dims", "agg_values"],
            filter=in_range & (ds.field("kind").cast(pa.string()) == "row") & ~ds.field("deleted"),
        )
        .to_reader()
    )
    batch_reader = (
        batch.to_pyarrow_dataset(file_pruning_predicate=[("metric", "in", metric_list), ("date", "in", day_list)])
        .scanner(columns=["metric", "window_start", "window_end", "dims", "values"], filter=in_range)
        .to_reader()
    )
    t_open = time.perf_counter()

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if args.threads:
        con.execute(f"SET threads = {args.threads}")
    con.register("serving_rows", serving_reader)
    con.register("batch_rows", batch_reader)

    paths = "[" + ", ".join(sql_str(f'$."{n}"') for n in names) + "]"
    per_metric = " ".join(
        f"WHEN {sql_str(m)} THEN ("
        + " AND ".join(compare_expr(f"bx[{slot[a]}]", f"sx[{slot[a]}]", tol) for a, tol in aggs)
        + ")"
        for m, aggs in metrics.items()
    )
    query = f"""
    WITH b AS (
        SELECT metric, window_start, window_end, dims, "values" AS v FROM batch_rows
    ), s AS (
        SELECT metric, window_start, window_end, dims, agg_values AS v FROM serving_rows
    ), j AS (
        SELECT metric, dims, b.v IS NULL AS no_b, s.v IS NULL AS no_s,
               json_extract_string(b.v, {paths}) AS bx, json_extract_string(s.v, {paths}) AS sx
        FROM b FULL OUTER JOIN s USING (metric, window_start, window_end, dims)
    ), c AS (
        SELECT metric, dims,
               CASE WHEN no_s THEN 'missing_in_serving'
                    WHEN no_b THEN 'unexpected_in_serving'
                    WHEN (CASE metric {per_metric} END) THEN 'ok'
                    ELSE 'value_drift' END AS verdict
        FROM j
    )
    SELECT metric, verdict, count(*) AS n, count(DISTINCT dims) AS keys,
           count(DISTINCT dims) FILTER (WHERE verdict <> 'ok') AS keys_differing
    FROM c GROUP BY GROUPING SETS ((metric, verdict), ())
    """
    rows = con.execute(query).fetchall()
    t_diff = time.perf_counter()

    verdicts = ["missing_in_serving", "unexpected_in_serving", "value_drift", "ok"]
    counts = {v: 0 for v in verdicts}
    by_metric = {m: {v: 0 for v in verdicts} for m in metric_list}
    keys = keys_differing = 0
    for metric, verdict, n, k, kd in rows:
        if metric is None and verdict is None:
            keys, keys_differing = k, kd
            continue
        counts[verdict] += n
        by_metric[metric][verdict] += n
    checked = sum(counts.values())
    differences = checked - counts["ok"]
    result = {
        "serving_table": serving_path,
        "serving_version": serving.version(),
        "batch_table": batch_path,
        "batch_version": batch.version(),
        "from": args.from_,
        "to": args.to,
        "counts": {
            "checked": checked,
            "differences": differences,
            **counts,
            "keys": keys,
            "keys_differing": keys_differing,
            "share_rows_differing": differences / checked if checked else 0.0,
            "share_keys_differing": keys_differing / keys if keys else 0.0,
        },
        "by_metric": by_metric,
        "seconds": {"open": round(t_open - t0, 2), "diff": round(t_diff - t_open, 2), "total": round(t_diff - t0, 2)},
        "versions": {"duckdb": duckdb.__version__, "deltalake": __import__("deltalake").__version__},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    c = result["counts"]
    print(f"duckdb diff [{args.from_}, {args.to}): serving v{result['serving_version']} vs batch v{result['batch_version']}")
    print(f"checked {checked} keys, {differences} differences ({c['share_rows_differing']:.2%})")
    for v in verdicts:
        print(f"  {v:<24} {counts[v]:>10}")
    print(f"dimension keys {keys}, with a difference {keys_differing} ({c['share_keys_differing']:.2%})")
    print(f"seconds: open {result['seconds']['open']}, diff {result['seconds']['diff']}")


if __name__ == "__main__":
    main()
