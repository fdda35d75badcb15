//! The cost of one stream flush: `write_provisional` of 10k changes (new keys, then re-fired keys) into a
//! serving table that already holds earlier flushes, on Delta (local disk) and Postgres. Prints the median
//! of several writes; asserts nothing about time. Used to measure the emission log's overhead.
//!
//! `cargo bench -p tidemark-store --bench flush --profile dev`; `TIDEMARK_BENCH_FLUSH_ROWS` (default
//! `10000`), `TIDEMARK_BENCH_FLUSH_WRITES` (default `6`).

use std::collections::BTreeMap;
use std::time::Instant;

use tidemark_core::{AggValue, Dimensions, EventTime, MetricRow, Origin, Pane, RowChange, RowKey, Window};
use tidemark_store::{DeltaStoreConfig, PostgresStore, ServingStore, SourceProgress, TopicPartition};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Change `i` of flush `f`: flushes alternate between new windows and re-firing the previous flush's
/// windows at a higher revision (as a late pane would), all within one day.
fn change(f: usize, i: usize, revision: u32) -> RowChange {
    let minute = (f / 2) as i64;
    let start = EventTime::from_secs(1_795_392_000 + minute * 60).expect("time");
    let end = EventTime::from_micros(start.as_micros() + 60_000_000).expect("time");
    RowChange::Upsert(MetricRow {
        key: RowKey {
            metric: "flush".into(),
            window: Window::new(start, end).expect("window"),
            dims: Dimensions::new([("page".into(), format!("/p{i}"))]),
        },
        values: BTreeMap::from([("n".into(), AggValue::Int(i as i64)), ("avg".into(), AggValue::Float(1.5))]),
        events: 10,
        origin: Origin::Speed { revision, pane: if revision == 0 { Pane::OnTime } else { Pane::Late }, watermark: end },
        computed_at: end,
    })
}

async fn run<S: ServingStore>(name: &str, store: &S, rows: usize, writes: usize) {
    store.init().await.expect("init");
    let epoch = store.claim_writer("flush").await.expect("claim").writer_epoch;
    let mut times = Vec::new();
    for f in 0..writes {
        let changes: Vec<RowChange> = (0..rows).map(|i| change(f, i, (f % 2) as u32)).collect();
        let p = SourceProgress {
            pipeline: "flush".into(),
            writer_epoch: epoch,
            sequence: f as u64 + 1,
            offsets: BTreeMap::from([(TopicPartition::new("events", 0), f as i64)]),
            checkpoint: Some(vec![0u8; 64 * 1024]),
        };
        let t = Instant::now();
        store.write_provisional(&changes, &p).await.expect("write");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let first = times[0];
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{name:<9} write of {rows} changes: median {:>8.1} ms, first {first:>8.1} ms, max {:>8.1} ms ({writes} writes)",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
}

#[tokio::main]
async fn main() {
    let rows = env("TIDEMARK_BENCH_FLUSH_ROWS", 10_000);
    let writes = env("TIDEMARK_BENCH_FLUSH_WRITES", 6);
    let dir = tempfile::tempdir().expect("tempdir");
    let delta = DeltaStoreConfig::new(format!("file://{}", dir.path().display())).build().await.expect("delta");
    run("delta", &delta, rows, writes).await;
    let db = tidemark_store::testing::postgres().await.expect("throwaway postgres");
    let pg = PostgresStore::connect(&db.conninfo, "bench").await.expect("connect");
    run("postgres", &pg, rows, writes).await;
}
