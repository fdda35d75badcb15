//! Append throughput of the raw event archive (a bench binary: prints numbers, asserts nothing about time).
//!
//! `cargo bench -p tidemark-store --bench archive` (release) or add `--profile dev` for a quick run.
//! Environment: `TIDEMARK_BENCH_ARCHIVE_ROWS` (default `100000`), `TIDEMARK_BENCH_ARCHIVE_CALLS` (appends
//! the rows are split into, default `10`). Rows are spread over 4 Kafka partitions of one topic, with
//! ~200-byte JSON payloads, on a local `file://` table.

use std::time::Instant;

use tidemark_core::{EventTime, SourceCoordinates};
use tidemark_store::{ArchiveRow, RawArchive};

const PARTITIONS: i64 = 4;
/// 2026-11-23T06:00:00Z.
const T0: i64 = 1_795_413_600_000_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(default)
}

fn row(i: i64) -> ArchiveRow {
    let ts = T0 + i * 1_000;
    let id = format!("ev-{i:010}");
    ArchiveRow {
        payload: serde_json::json!({
            "id": id, "ts": ts, "user": format!("u{}", i % 997), "page": format!("/p/{}", i % 113),
            "k": if i % 2 == 0 { "a" } else { "b" }, "i": i % 5000, "f": (i % 1000) as f64 / 8.0,
            "ua": "Mozilla/5.0 (X11; Linux x86_64)",
        })
        .to_string(),
        event_id: id,
        event_time: EventTime::from_micros(ts).expect("time"),
        ingest_time: EventTime::from_micros(ts + 5_000_000).expect("time"),
        coords: SourceCoordinates {
            source: "pageviews".into(),
            partition: (i % PARTITIONS) as i32,
            offset: i / PARTITIONS,
        },
    }
}

#[tokio::main]
async fn main() {
    let n = env_usize("TIDEMARK_BENCH_ARCHIVE_ROWS", 100_000);
    let calls = env_usize("TIDEMARK_BENCH_ARCHIVE_CALLS", 10).max(1);
    let rows: Vec<ArchiveRow> = (0..n as i64).map(row).collect();
    let bytes: usize = rows.iter().map(|r| r.payload.len()).sum();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    let archive = RawArchive::open(url.clone()).await.expect("open");
    let per = n.div_ceil(calls);

    let t = Instant::now();
    let mut written = 0;
    for chunk in rows.chunks(per) {
        written += archive.append(chunk).await.expect("append").written;
    }
    let s = t.elapsed().as_secs_f64();
    assert_eq!(written, n as u64);
    println!(
        "archive append: {n} rows ({:.1} MB of payload) in {calls} calls of {per}: {s:.2} s, {:.0} rows/s",
        bytes as f64 / 1e6,
        n as f64 / s
    );

    // a restarted service replaying everything: a fresh handle, every row skipped, no commit
    let restarted = RawArchive::open(url).await.expect("open");
    let t = Instant::now();
    let mut skipped = 0;
    for chunk in rows.chunks(per) {
        skipped += restarted.append(chunk).await.expect("replay").skipped;
    }
    let s = t.elapsed().as_secs_f64();
    assert_eq!(skipped, n as u64);
    println!("archive replay (all skipped, fresh handle): {n} rows in {s:.2} s, {:.0} rows/s", n as f64 / s);

    let t = Instant::now();
    let offsets = restarted.recorded_offsets().await.expect("recorded offsets");
    println!("recorded_offsets over {n} rows: {} partitions in {:.3} s", offsets.len(), t.elapsed().as_secs_f64());
}
