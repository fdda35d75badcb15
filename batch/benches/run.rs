//! End-to-end batch run benchmark: N events (default 10M; `TIDEMARK_BENCH_EVENTS`) over D days (default 1;
//! `TIDEMARK_BENCH_DAYS`), 10k skewed keys, 1% re-delivered ids, landed as hourly Parquet files (event
//! fields as columns), then a [`BatchRun`] over the whole range into a Delta batch view with the plan
//! bench's three metrics (1-min tumbling, 5-min/1-min hopping, 30-s-gap sessions; count/sum/min/max/mean).
//! One run per entry of `TIDEMARK_BENCH_RUNS` (comma-separated `CHUNK:PART_EVENTS`, default `0:-,0:max`:
//! `CHUNK` `0` = unchunked, else a duration like `6h`; `PART_EVENTS` `-` = the default
//! [`DEFAULT_PART_EVENTS`](tidemark_batch::DEFAULT_PART_EVENTS), `max` = never split, else a number),
//! each into a fresh view. Prints wall time, events/s, rows written, parts, spilled bytes and the run's peak RSS (VmHWM, reset before each run through
//! `/proc/self/clear_refs`). Run: `cargo bench -p tidemark-batch --bench run`. `TIDEMARK_BENCH_DIR` puts
//! the files somewhere other than a temp dir (100M events take about 2.5 GB of Parquet).

use std::sync::Arc;
use std::time::Instant;

use deltalake::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use tidemark_batch::{BatchRun, InputSource};
use tidemark_core::{Duration, EventTime, PipelineSpec};

mod common;

// the allocator `tidemark` itself uses (cli/src/main.rs)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use common::{Rng, SPEC};

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kib as f64 / 1024.0
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` value 5).
fn reset_peak() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak RSS ({e}): the peaks below include earlier runs");
    }
}

/// Writes the events as one Parquet file per hour; returns the first event hour.
fn generate(dir: &std::path::Path, n: u64, days: i64) -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_micros() as i64;
    // whole days ending at least a day ago, so no event is in the future of its file
    let t0 = (now - (days + 1) * DAY_US).div_euclid(DAY_US) * DAY_US;
    let span = days * DAY_US;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("user", DataType::Utf8, false),
        Field::new("latency", DataType::Int64, false),
        Field::new("bytes", DataType::Float64, false),
    ]));
    let mut rng = Rng(42);
    let hours = days * 24;
    let mut i: u64 = 0;
    for h in 0..hours {
        let end = (i128::from(n) * i128::from(h + 1) / i128::from(hours)) as u64;
        let (mut ids, mut ts, mut users, mut lat, mut bytes) = (vec![], vec![], vec![], vec![], vec![]);
        while i < end {
            // roughly in time order with up to 10 s of disorder; 1% re-delivered ids
            let t = t0 + (i128::from(i) * i128::from(span) / i128::from(n)) as i64 + (rng.unit() * 10_000_000.0) as i64;
            let id = if i > 0 && rng.next().is_multiple_of(100) { i - 1 - rng.next() % i.min(1000) } else { i };
            // skewed keys: key k has weight ~ 1/sqrt(k)
            let key = (rng.unit().powi(2) * 10_000.0) as u32;
            ids.push(format!("e{id}"));
            ts.push(t);
            users.push(format!("user{key}"));
            bytes.push(rng.unit() * 1e5);
            lat.push((rng.next() % 5_000) as i64);
            i += 1;
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(Int64Array::from(ts)),
            Arc::new(StringArray::from(users)),
            Arc::new(Int64Array::from(lat)),
            Arc::new(Float64Array::from(bytes)),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols).expect("batch");
        let file = std::fs::File::create(dir.join(format!("hour-{h:05}.parquet"))).expect("create");
        let mut w = deltalake::parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
    }
    t0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::var("TIDEMARK_BENCH_EVENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let days: i64 = std::env::var("TIDEMARK_BENCH_DAYS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let runs = std::env::var("TIDEMARK_BENCH_RUNS").unwrap_or_else(|_| "0:-,0:max".to_owned());
    let spec = PipelineSpec::parse(SPEC, "bench.toml", None).unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = std::env::var("TIDEMARK_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| tmp.path().into());
    let events_dir = root.join("events");
    std::fs::create_dir_all(&events_dir).expect("mkdir");
    let started = Instant::now();
    let t0 = generate(&events_dir, n, days);
    let bytes: u64 =
        std::fs::read_dir(&events_dir).expect("ls").filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    println!(
        "landed {n} events over {days} day(s) as {} hourly Parquet files ({:.0} MiB) in {:.2?} (not measured below)",
        days * 24,
        bytes as f64 / 1048576.0,
        started.elapsed()
    );
    let from = EventTime::from_micros(t0).expect("t0");
    let to = EventTime::from_micros(t0 + days * DAY_US).expect("t1");
    for (i, entry) in runs.split(',').map(str::trim).enumerate() {
        let (chunk, part_events) = entry.split_once(':').unwrap_or((entry, "-"));
        let view = root.join(format!("view-{i}"));
        let mut run = BatchRun::new(&spec, from, to)
            .input(InputSource::parquet(format!("file://{}", events_dir.display())))
            .batch_view(format!("file://{}", view.display()))
            .spill_dir(&root)
            .progress(false);
        if chunk != "0" {
            run = run.chunk(chunk.parse::<Duration>().unwrap_or_else(|e| panic!("chunk {chunk:?}: {e}")));
        }
        match part_events {
            "-" => {}
            "max" => run = run.part_events(u64::MAX),
            n => run = run.part_events(n.parse().unwrap_or_else(|e| panic!("part events {n:?}: {e}"))),
        }
        reset_peak();
        let before = vm_hwm_mib();
        let t = Instant::now();
        let report = run.run().await.expect("batch run");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "run chunk={chunk:<4} part_events={part_events:<9} {secs:>8.2} s  {:>10.0} events/s  {} rows written, \
             {} duplicates, {} invalid, {} part(s), {:.0} MiB spilled  peak RSS {:.0} MiB (at start {:.0} MiB)",
            n as f64 / secs,
            report.rows_written,
            report.duplicates,
            report.invalid,
            report.parts,
            report.spilled_bytes as f64 / 1048576.0,
            vm_hwm_mib(),
            before
        );
        let _ = std::fs::remove_dir_all(&view);
    }
    if std::env::var("TIDEMARK_BENCH_DIR").is_ok() {
        let _ = std::fs::remove_dir_all(&events_dir);
    }
}
