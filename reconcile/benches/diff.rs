//! Benchmark of `tidemark_reconcile::diff` (a bench binary that prints numbers; `harness = false`).
//!
//! ```text
//! cargo bench -p tidemark-reconcile --bench diff --profile dev
//! TIDEMARK_BENCH_ROWS=2000000 TIDEMARK_BENCH_CHUNK=500000 cargo bench -p tidemark-reconcile --bench diff
//! ```
//!
//! Rows are window rows of four metrics with two or three dimensions each and three to five aggregates, one
//! window per minute. `TIDEMARK_BENCH_ROWS` rows (default 10M) are compared on each side, in chunks of
//! `TIDEMARK_BENCH_CHUNK` rows per side (default 1M): a `MetricRow` with its owned strings and value map
//! takes ~1 KB in memory, so 10M rows per side at once would need ~20 GB. Reconcile and backfill read a
//! range at a time, so chunking is how the diff runs in practice too. Generating the rows is not timed.
//!
//! `diff s` is `tidemark_reconcile::diff` on the rows, what the reconciler calls with what the stores' reads
//! return. For the breakdown the same chunk is then compared again in two timed steps on one thread:
//! `convert s` (`Columns::new` for both sides) and `join s` (`diff_columns`), always the columnar path; the
//! two results must be equal. Four cases: `clean` (both sides equal), `1pct` (~1% of keys different:
//! missing, phantom and value drift in equal parts, plus float noise within tolerance), `sorted` (equal
//! sides, both in key order: `diff` takes its aligned fast path and converts nothing) and `scattered`
//! (`clean` with the worst heap locality). In `clean` and `1pct` the serving side is in another order than
//! the batch side; each side's rows are allocated in the order the side holds them, as a store read decodes
//! them, except in `scattered`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tidemark_core::{
    AggValue, Dimensions, EventTime, MetricRow, Origin, Pane, PipelineSpec, RowKey, ValidSpec, Window,
};
use tidemark_reconcile::{Columns, Verdict, diff, diff_columns};

const SPEC: &str = r#"
version = 1
name = "bench"
[source]
type = "file"
path = "events.jsonl"
[event]
id = "id"
time = { field = "ts", format = "epoch_ms" }
dimensions = ["page", "country", "device", "user"]
values = { latency_ms = "int", bytes = "float" }
[[metrics]]
name = "views_per_page"
dimensions = ["page", "country"]
window = { type = "tumbling", size = "1m" }
aggregates = [
  { name = "views", fn = "count" },
  { name = "latency_sum", fn = "sum", field = "latency_ms" },
  { name = "latency_max", fn = "max", field = "latency_ms" },
  { name = "latency_mean", fn = "mean", field = "latency_ms", tolerance = "rel(1e-9)" },
  { name = "users", fn = "count_distinct", field = "user" },
]
[[metrics]]
name = "bytes_per_country"
dimensions = ["country", "device"]
window = { type = "tumbling", size = "1m" }
aggregates = [
  { name = "views", fn = "count" },
  { name = "bytes", fn = "sum", field = "bytes", tolerance = "rel(1e-6)" },
  { name = "bytes_min", fn = "min", field = "bytes" },
]
[[metrics]]
name = "views_per_device"
dimensions = ["device", "page", "country"]
window = { type = "tumbling", size = "1m" }
aggregates = [
  { name = "views", fn = "count" },
  { name = "latency_min", fn = "min", field = "latency_ms" },
  { name = "latency_mean", fn = "mean", field = "latency_ms", tolerance = "rel(1e-9)" },
]
[[metrics]]
name = "users_per_page"
dimensions = ["page", "user"]
window = { type = "tumbling", size = "1m" }
aggregates = [
  { name = "views", fn = "count" },
  { name = "bytes", fn = "sum", field = "bytes", tolerance = "abs(0.5)" },
  { name = "pages", fn = "count_distinct", field = "page" },
]
[stores]
raw_archive = "raw"
serving = "serving"
dead_letter = "dead"
batch_view = "batch"
"#;

/// Distinct dimension combinations per metric and minute (every dimension value carries the combination
/// number, so keys are unique).
const KEYS_PER_MINUTE: u64 = 250;

/// A cheap deterministic hash (splitmix64) so every run generates the same rows.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn dims_of(metric: usize, names: &[String], k: u64) -> Dimensions {
    Dimensions::new(names.iter().enumerate().map(|(j, name)| {
        let v = mix(k * 7 + j as u64 + metric as u64 * 1000) % 1000;
        let value = match name.as_str() {
            "page" => format!("/p/{}", k % 997),
            "country" => format!("{}{k}", ["DE", "FR", "US", "JP", "BR", "IN"][(k % 6) as usize]),
            "device" => format!("{}-{k}", ["ios", "android", "web"][(v % 3) as usize]),
            _ => format!("u{k}"),
        };
        (name.clone(), value)
    }))
}

struct Generator<'a> {
    spec: &'a ValidSpec,
    dims: Vec<Vec<String>>,
}

impl<'a> Generator<'a> {
    fn new(spec: &'a ValidSpec) -> Self {
        let dims = spec.metrics().iter().map(|m| m.dims.iter().map(|(name, _)| name.clone()).collect()).collect();
        Generator { spec, dims }
    }

    /// Row number `i` of the batch side: metric `i % metrics`, then minute and dimension combination.
    fn batch_row(&self, i: u64) -> MetricRow {
        let metrics = self.spec.metrics();
        let m = (i % metrics.len() as u64) as usize;
        let j = i / metrics.len() as u64;
        let (minute, k) = (j / KEYS_PER_MINUTE, j % KEYS_PER_MINUTE);
        let metric = &metrics[m];
        let start_s = 1_700_000_000 / 60 * 60 + minute as i64 * 60;
        let start = EventTime::from_secs(start_s).expect("in range");
        let end = EventTime::from_secs(start_s + 60).expect("in range");
        let h = mix(i);
        let events = 1 + h % 500;
        let values = metric
            .aggregates
            .iter()
            .enumerate()
            .map(|(a, agg)| {
                let v = match agg.name.as_str() {
                    "latency_mean" => AggValue::Float((h % 10_000) as f64 / 7.0),
                    "bytes" => AggValue::Float((h >> 8) as f64 / 1e9),
                    "bytes_min" => AggValue::Float((h >> 16) as f64 / 1e12),
                    "views" => AggValue::Int(events as i64),
                    _ => AggValue::Int(((h >> (a * 3)) % 100_000) as i64),
                };
                (agg.name.clone(), v)
            })
            .collect::<BTreeMap<_, _>>();
        MetricRow {
            key: RowKey {
                metric: metric.name.clone(),
                window: Window::new(start, end).expect("start < end"),
                dims: dims_of(m, &self.dims[m], k),
            },
            values,
            events,
            origin: Origin::Batch { run_id: "bench-run".into(), epoch: 1 },
            computed_at: end,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Clean,
    OnePercent,
    /// Equal sides, both in key order (as stores read with `ORDER BY` key return them).
    CleanSorted,
    /// `clean` with the serving rows moved into hash order after they were allocated, so that each row's
    /// strings lie far from its neighbours' (the worst heap locality; how this bench laid out `clean` before
    /// the columnar diff).
    Scattered,
}

/// The rows again, each allocated in the order of the vector, as a store read decodes them.
fn allocated_in_order(rows: Vec<MetricRow>) -> Vec<MetricRow> {
    rows.to_vec()
}

/// One chunk: batch rows `[from, to)`, and the serving side for `case`. Each side's rows are allocated in
/// the order the side holds them, as a store read decodes (and allocates) rows in the order it returns
/// them; except in `scattered`, where the serving rows are reordered after allocation.
fn chunk(g: &Generator<'_>, from: u64, to: u64, case: Case) -> (Vec<MetricRow>, Vec<MetricRow>) {
    let batch: Vec<MetricRow> = (from..to).map(|i| g.batch_row(i)).collect();
    let mut serving = Vec::with_capacity(batch.len());
    for (i, b) in (from..).zip(&batch) {
        let mut s = b.clone();
        s.origin = Origin::Speed { revision: 0, pane: Pane::OnTime, watermark: b.key.window.end() };
        if case == Case::OnePercent {
            match mix(i ^ 0xD1FF) % 500 {
                // missing in serving
                0 | 1 => continue,
                // value drift
                2 | 3 => {
                    if let Some(AggValue::Int(v)) = s.values.get_mut("views") {
                        *v += 1;
                    }
                }
                // phantom: a serving key the batch does not have (a different dimension value)
                4 | 5 => {
                    let mut p = s.clone();
                    p.key.dims =
                        Dimensions::new(p.key.dims.pairs().iter().map(|(n, v)| (n.clone(), format!("{v}-phantom"))));
                    serving.push(p);
                }
                // float noise within tolerance: still ok
                6 => {
                    for v in s.values.values_mut() {
                        if let AggValue::Float(x) = v {
                            *x *= 1.0 + 1e-12;
                        }
                    }
                }
                _ => {}
            }
        }
        serving.push(s);
    }
    if case == Case::CleanSorted {
        let mut batch = batch;
        batch.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        serving.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        return (allocated_in_order(batch), allocated_in_order(serving));
    }
    // Stores return rows in their own order: serve them by hash, not by key.
    serving.sort_by_cached_key(|r| mix(r.events ^ r.key.window.start().as_micros() as u64));
    if case == Case::Scattered {
        return (batch, serving);
    }
    (batch, allocated_in_order(serving))
}

/// glibc merges freed small chunks lazily, at the next allocation of some size: after the generator freed
/// a million rows (`allocated_in_order`), the first such allocation takes ~1 s. That debt is the
/// generator's; settle it before the timed diff.
fn settle_allocator() {
    let block: Vec<u8> = vec![1; 256 * 1024];
    std::hint::black_box(&block);
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects cases by name ("clean", "1pct", ...).
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let spec = PipelineSpec::parse(SPEC, "bench.toml", Some(std::path::Path::new("/bench"))).expect("bench spec");
    let g = Generator::new(&spec);
    let rows = env_u64("TIDEMARK_BENCH_ROWS", 10_000_000);
    let chunk_rows = env_u64("TIDEMARK_BENCH_CHUNK", 1_000_000).clamp(1, rows.max(1));
    let profile = if cfg!(debug_assertions) { "dev (unoptimized)" } else { "optimized" };
    println!("diff benchmark: {rows} window rows per side, chunks of {chunk_rows}, profile {profile}");
    println!(
        "{:<10} {:>12} {:>10} {:>12} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "case", "rows/side", "diff s", "rows/s", "convert s", "join s", "gen s", "differences", "peak RSS"
    );
    let cases = [
        (Case::Clean, "clean"),
        (Case::OnePercent, "1pct"),
        (Case::CleanSorted, "sorted"),
        (Case::Scattered, "scattered"),
    ];
    for (case, name) in cases {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let (mut timed, mut generating) = (Duration::ZERO, Duration::ZERO);
        let (mut converting, mut joining) = (Duration::ZERO, Duration::ZERO);
        let mut verdicts: BTreeMap<Verdict, u64> = BTreeMap::new();
        let (mut checked, mut differences) = (0u64, 0u64);
        let mut from = 0;
        while from < rows {
            let to = (from + chunk_rows).min(rows);
            let t = Instant::now();
            let (batch, serving) = chunk(&g, from, to, case);
            settle_allocator();
            generating += t.elapsed();
            let t = Instant::now();
            let d = std::hint::black_box(diff(&spec, &batch, &serving).expect("diff"));
            timed += t.elapsed();
            let t = Instant::now();
            let (b, s) = (Columns::new(&spec, &batch).expect("rows"), Columns::new(&spec, &serving).expect("rows"));
            converting += t.elapsed();
            let t = Instant::now();
            let again = std::hint::black_box(diff_columns(&b, &s).expect("diff"));
            joining += t.elapsed();
            assert_eq!(again, d, "the two timings compare the same");
            drop((b, s, again));
            checked += d.checked();
            differences += d.differences.len() as u64;
            for m in d.metrics.values() {
                for (v, n) in &m.verdicts {
                    *verdicts.entry(*v).or_default() += n;
                }
            }
            let t = Instant::now();
            drop((batch, serving, d));
            generating += t.elapsed();
            from = to;
        }
        let per_s = rows as f64 / timed.as_secs_f64();
        println!(
            "{:<10} {:>12} {:>10.2} {:>12.0} {:>10.2} {:>10.2} {:>10.1} {:>12} {:>7} MiB",
            name,
            rows,
            timed.as_secs_f64(),
            per_s,
            converting.as_secs_f64(),
            joining.as_secs_f64(),
            generating.as_secs_f64(),
            differences,
            peak_rss_kib() / 1024
        );
        println!("           keys checked {checked}, verdicts {verdicts:?}");
        if case != Case::OnePercent {
            assert_eq!(differences, 0, "equal sides must diff clean");
        } else {
            assert!(differences > rows / 200, "about 1% of keys must differ, got {differences}");
        }
    }
}
