//! What a range read of the raw archive costs in a long archive against a short one (issue 19: evidence
//! reads follow the range). A bench binary: prints numbers, asserts only what the reads return.
//!
//! `cargo bench -p tidemark-store --bench archive_range` (release) or add `--profile dev` for a quick run.
//! Environment: `TIDEMARK_BENCH_RANGE_DAYS` (days in the long archive, default `30`),
//! `TIDEMARK_BENCH_RANGE_PER_DAY` (events per day, default `50000`), `TIDEMARK_BENCH_RANGE_APPENDS` (appends
//! per day, like stream flushes, default `24`). 0.1% of the events are delivered twice. The same day is
//! read (arrivals and duplicates, as `tidemark reconcile` does) from a 1-day archive and from the long one.

use std::time::Instant;

use tidemark_core::{EventTime, SourceCoordinates};
use tidemark_store::{ArchiveRow, RawArchive};

/// 2026-11-01T00:00:00Z.
const DAY0: i64 = 1_793_491_200_000_000;
const DAY: i64 = 86_400_000_000;

fn env_i64(name: &str, default: i64) -> i64 {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(default)
}

/// Day `d`'s events, in `appends` arrival-ordered slices; every 1000th event is delivered again on
/// partition 1.
fn day(d: i64, per_day: i64, appends: i64) -> Vec<Vec<ArchiveRow>> {
    let step = DAY / per_day;
    let row = |i: i64, partition: i32, offset: i64| {
        let ts = DAY0 + d * DAY + i * step;
        let id = format!("ev-{d}-{i:08}");
        ArchiveRow {
            payload: serde_json::json!({
                "id": id, "ts": ts, "user": format!("u{}", i % 997), "page": format!("/p/{}", i % 113),
                "ua": "Mozilla/5.0 (X11; Linux x86_64)",
            })
            .to_string(),
            event_id: id,
            event_time: EventTime::from_micros(ts).expect("time"),
            ingest_time: EventTime::from_micros(ts + 2_000_000).expect("time"),
            coords: SourceCoordinates { source: "pageviews".into(), partition, offset },
        }
    };
    let per_append = (per_day + appends - 1) / appends;
    let mut out = Vec::new();
    let mut again = d * per_day;
    for a in 0..appends {
        let mut rows = Vec::new();
        for i in (a * per_append)..((a + 1) * per_append).min(per_day) {
            rows.push(row(i, 0, d * per_day + i));
            if i % 1000 == 999 {
                rows.push(row(i, 1, again));
                again += 1;
            }
        }
        out.push(rows);
    }
    out
}

async fn archive_of(days: std::ops::Range<i64>, per_day: i64, appends: i64) -> (tempfile::TempDir, RawArchive) {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = RawArchive::open(format!("file://{}", dir.path().display())).await.expect("open");
    for d in days {
        for rows in day(d, per_day, appends) {
            archive.append(&rows).await.expect("append");
        }
    }
    (dir, archive)
}

/// Reads day `d` as the reconciler does (plus a minute of fixed-window reach) and prints what it cost.
async fn read_day(label: &str, archive: &RawArchive, d: i64, per_day: i64) {
    let from = EventTime::from_micros(DAY0 + d * DAY).expect("time");
    let to = EventTime::from_micros(DAY0 + (d + 1) * DAY).expect("time");
    let hi = EventTime::from_micros(DAY0 + (d + 1) * DAY + 60_000_000).expect("time");
    let mut best = f64::MAX;
    let mut last = None;
    for _ in 0..3 {
        let t = Instant::now();
        let read = archive.read_range(from, hi).arrivals(from, to).duplicates(true).run().await.expect("read");
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(read);
    }
    let read = last.expect("three reads");
    assert_eq!(read.duplicates.len() as i64, per_day / 1000);
    assert_eq!(read.arrivals.len() as i64, per_day + per_day / 1000);
    let s = read.stats;
    println!(
        "{label}: read 1 day in {best:.3} s (best of 3): files {} of {}, rows read {}, payload rows read {}, \
         {} arrivals, {} duplicated ids",
        s.files_read,
        s.files_in_table,
        s.rows_read,
        s.payload_rows_read,
        read.arrivals.len(),
        read.duplicates.len()
    );
}

#[tokio::main]
async fn main() {
    let days = env_i64("TIDEMARK_BENCH_RANGE_DAYS", 30).max(1);
    let per_day = env_i64("TIDEMARK_BENCH_RANGE_PER_DAY", 50_000).max(1000);
    let appends = env_i64("TIDEMARK_BENCH_RANGE_APPENDS", 24).max(1);
    let middle = days / 2;

    let t = Instant::now();
    let (_short_dir, short) = archive_of(middle..middle + 1, per_day, appends).await;
    println!("1-day archive: {per_day} events in {appends} appends, written in {:.1} s", t.elapsed().as_secs_f64());
    read_day("1-day archive", &short, middle, per_day).await;

    let t = Instant::now();
    let (_long_dir, long) = archive_of(0..days, per_day, appends).await;
    println!(
        "{days}-day archive: {} events in {} appends, written in {:.1} s",
        days * per_day,
        days * appends,
        t.elapsed().as_secs_f64()
    );
    read_day(&format!("{days}-day archive"), &long, middle, per_day).await;
}
