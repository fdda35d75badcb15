//! Upsert throughput of the serving stores (a bench binary: prints numbers, asserts nothing about time).
//!
//! `cargo bench -p tidemark-store --bench upsert` (release) or add `--profile dev` for a quick run.
//! Environment: `TIDEMARK_BENCH_PG_ROWS` (default `100000,1000000`), `TIDEMARK_BENCH_DELTA_TABLE`
//! (default `1000000` rows, 100 daily partitions), `TIDEMARK_BENCH_DELTA_MERGE` (rows merged into 10% of the
//! partitions, default `100000`), `TIDEMARK_BENCH_DELTA_SIZES` (table sizes for the growth series,
//! default `100000,300000,1000000`), `TIDEMARK_BENCH_IDLE_WAIT` (seconds to wait for a 1-min load average
//! below 1 before measuring, default 180).

use std::collections::BTreeMap;
use std::time::Instant;

use tidemark_core::{AggValue, Dimensions, EventTime, MetricRow, Origin, Pane, RowChange, RowKey, Window};
use tidemark_store::{DeltaStoreConfig, PostgresStore, ServingStore, SourceProgress, TopicPartition, WriteOutcome};

// the allocator `tidemark` itself uses (cli/src/main.rs)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DAY: i64 = 86_400;
const PARTITIONS: i64 = 100;

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Row `i` of a table of `n` rows spread over 100 daily partitions: consecutive `i` fill one day after
/// the other, so a load in chunks touches few partitions at a time.
fn row(i: usize, n: usize, revision: u32) -> RowChange {
    let per_day = (n as i64 / PARTITIONS).max(1);
    let day = i as i64 / per_day;
    let slot = i as i64 % per_day;
    let start = EventTime::from_secs(day * DAY + (slot % 1_440) * 60).unwrap_or(EventTime::UNIX_EPOCH);
    let end = EventTime::from_micros(start.as_micros() + 60_000_000).unwrap_or(EventTime::MAX);
    let key = RowKey {
        metric: "bench".into(),
        window: Window::new(start, end).expect("a minute window"),
        dims: Dimensions::new([("page".into(), format!("/p{}", slot / 1_440))]),
    };
    RowChange::Upsert(MetricRow {
        key,
        values: BTreeMap::from([("n".into(), AggValue::Int(i as i64)), ("avg".into(), AggValue::Float(1.5))]),
        events: 10,
        origin: Origin::Speed { revision, pane: Pane::OnTime, watermark: end },
        computed_at: end,
    })
}

fn progress(epoch: u64, seq: u64) -> SourceProgress {
    SourceProgress {
        pipeline: "bench".into(),
        writer_epoch: epoch,
        sequence: seq,
        offsets: BTreeMap::from([(TopicPartition::new("events", 0), seq as i64)]),
        checkpoint: None,
    }
}

async fn timed_write<S: ServingStore>(store: &S, changes: &[RowChange], p: &SourceProgress) -> (f64, u64) {
    let t = Instant::now();
    let out = store.write_provisional(changes, p).await.expect("bench write");
    let applied = match out {
        WriteOutcome::Committed(s) => s.applied,
        WriteOutcome::AlreadyCommitted => 0,
    };
    (t.elapsed().as_secs_f64(), applied)
}

async fn bench_postgres() {
    let db = tidemark_store::testing::postgres().await.expect("throwaway postgres");
    for n in env_list("TIDEMARK_BENCH_PG_ROWS", "100000,1000000") {
        let store = PostgresStore::connect(&db.conninfo, &format!("bench_{n}")).await.expect("connect");
        store.init().await.expect("init");
        let epoch = store.claim_writer("bench").await.expect("claim").writer_epoch;
        let rows: Vec<RowChange> = (0..n).map(|i| row(i, n, 0)).collect();
        let (secs, applied) = timed_write(&store, &rows, &progress(epoch, 1)).await;
        println!("postgres insert {n:>9} rows: {secs:>7.2} s  {:>10.0} rows/s  (applied {applied})", n as f64 / secs);
        let rows: Vec<RowChange> = (0..n).map(|i| row(i, n, 1)).collect();
        let (secs, applied) = timed_write(&store, &rows, &progress(epoch, 2)).await;
        println!("postgres update {n:>9} rows: {secs:>7.2} s  {:>10.0} rows/s  (applied {applied})", n as f64 / secs);
        let (secs, applied) = timed_write(&store, &rows, &progress(epoch, 3)).await;
        println!("postgres stale  {n:>9} rows: {secs:>7.2} s  {:>10.0} rows/s  (applied {applied})", n as f64 / secs);
    }
}

async fn load_delta(url: &str, n: usize) -> (tidemark_store::DeltaStore, u64, u64) {
    let store = DeltaStoreConfig::new(url).build().await.expect("open");
    store.init().await.expect("init");
    let epoch = store.claim_writer("bench").await.expect("claim").writer_epoch;
    let chunk = 250_000;
    let mut seq = 0;
    let t = Instant::now();
    for start in (0..n).step_by(chunk) {
        seq += 1;
        let rows: Vec<RowChange> = (start..(start + chunk).min(n)).map(|i| row(i, n, 0)).collect();
        timed_write(&store, &rows, &progress(epoch, seq)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    println!("delta load      {n:>9} rows: {secs:>7.2} s  {:>10.0} rows/s", n as f64 / secs);
    (store, epoch, seq)
}

async fn bench_delta() {
    let table = env_list("TIDEMARK_BENCH_DELTA_TABLE", "1000000")[0];
    let merge = env_list("TIDEMARK_BENCH_DELTA_MERGE", "100000")[0];
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}/t", dir.path().display());
    let (store, epoch, seq) = load_delta(&url, table).await;
    // rewrite `merge` existing rows of the first 10 days (10% of the partitions)
    let rows: Vec<RowChange> = (0..merge.min(table / 10)).map(|i| row(i, table, 1)).collect();
    let (secs, applied) = timed_write(&store, &rows, &progress(epoch, seq + 1)).await;
    println!(
        "delta merge {:>9} rows into {table} (10% of partitions): {secs:>7.2} s  {:>10.0} rows/s (applied {applied})",
        rows.len(),
        rows.len() as f64 / secs
    );
    // growth: a fixed 10k-row MERGE spread over 10 partitions, into tables of growing size
    for size in env_list("TIDEMARK_BENCH_DELTA_SIZES", "100000,300000,1000000") {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("file://{}/t", dir.path().display());
        let (store, epoch, seq) = load_delta(&url, size).await;
        let per_day = size / PARTITIONS as usize;
        let rows: Vec<RowChange> =
            (0..10_000usize.min(size / 10)).map(|j| row((j % 10) * per_day + j / 10, size, 1)).collect();
        let (secs, applied) = timed_write(&store, &rows, &progress(epoch, seq + 1)).await;
        println!(
            "delta growth: merge {} rows (10 partitions) into a {size}-row table: {secs:.2} s (applied {applied})",
            rows.len()
        );
    }
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Waits (at most `TIDEMARK_BENCH_IDLE_WAIT` seconds, default 180; 0 skips) until the 1-minute load
/// average is below 1. Right after both cores were busy for a minute (a build, or a plain busy loop) this
/// machine measured 1M-row Postgres writes ~20% slower, so numbers taken then describe the machine's
/// state, not the store. The load at the start is printed either way.
fn wait_for_idle() {
    let limit: u64 = std::env::var("TIDEMARK_BENCH_IDLE_WAIT").ok().and_then(|s| s.parse().ok()).unwrap_or(180);
    let started = Instant::now();
    while let Some(load) = load_average() {
        if load < 1.0 || started.elapsed().as_secs() >= limit {
            println!(
                "1-min load average {load:.2} at the start (waited {:.0} s for < 1, at most {limit} s)",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}

#[tokio::main]
async fn main() {
    wait_for_idle();
    let which = std::env::args().nth(1).unwrap_or_default();
    if which.is_empty() || which == "--bench" || which == "postgres" {
        bench_postgres().await;
    }
    if which.is_empty() || which == "--bench" || which == "delta" {
        bench_delta().await;
    }
}
