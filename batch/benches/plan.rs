//! Batch plan benchmark: N events (default 10M) over 24 hours, 10k skewed keys, through de-duplication
//! and three metrics (1-min tumbling, 5-min/1-min hopping, 30-s-gap sessions) with count/sum/min/max/mean.
//! Prints events/s per phase and peak RSS (VmHWM). `TIDEMARK_BENCH_FINISH=1` also finishes each
//! metric's frame into core `MetricRow`s and reports rows/s for that step. Run: `cargo bench -p tidemark-batch --bench plan`;
//! `TIDEMARK_BENCH_EVENTS=1000000` for a smaller run.

use std::time::Instant;

use tidemark_batch::frame::EventFrameBuilder;
use tidemark_batch::plan;
use tidemark_core::{Event, EventTime, Num, Origin, PipelineSpec};

mod common;

// the allocator `tidemark` itself uses (cli/src/main.rs)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use common::{Rng, SPEC};

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let n: u64 = std::env::var("TIDEMARK_BENCH_EVENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let spec = PipelineSpec::parse(SPEC, "bench.toml", None).unwrap_or_else(|e| panic!("{e}"));
    let schema = spec.schema();
    let day_us: i64 = 86_400_000_000;
    let t0: i64 = 1_795_392_000_000_000; // 2026-11-23T00:00:00Z
    let mut rng = Rng(42);
    let started = Instant::now();
    let mut b = EventFrameBuilder::new(schema, false);
    let mut ev = Event { id: "".into(), time: EventTime::UNIX_EPOCH, dims: vec!["".into()], values: vec![] };
    for i in 0..n {
        // roughly in time order with up to 10 s of disorder; 1% re-delivered ids
        let t = t0 + (i128::from(i) * i128::from(day_us) / i128::from(n)) as i64 + (rng.unit() * 10_000_000.0) as i64;
        let id = if i > 0 && rng.next().is_multiple_of(100) { i - 1 - rng.next() % i.min(1000) } else { i };
        // skewed keys: key k has weight ~ 1/sqrt(k)
        let key = (rng.unit().powi(2) * 10_000.0) as u32;
        ev.id = format!("e{id}").into();
        ev.time = EventTime::from_micros(t).expect("in range");
        ev.dims[0] = format!("user{key}").into();
        ev.values = vec![Num::Float(rng.unit() * 1e5), Num::Int((rng.next() % 5_000) as i64)];
        b.push(&ev);
    }
    let df = b.finish().expect("frame");
    println!(
        "generated {n} events in {:.2?} (not measured below); peak RSS so far {:.0} MiB",
        started.elapsed(),
        vm_hwm_kib().unwrap_or(0) as f64 / 1024.0
    );

    let origin = Origin::Batch { run_id: "bench".into(), epoch: 0 };
    let t = Instant::now();
    let (events, dups) = plan::dedupe_by_id(df).expect("dedupe");
    let dedupe_s = t.elapsed().as_secs_f64();
    println!(
        "{:<16} {:>12.0} events/s  {:>8.2} s  ({dups} duplicates dropped)",
        "dedupe",
        n as f64 / dedupe_s,
        dedupe_s
    );
    if let Ok(path) = std::env::var("TIDEMARK_BENCH_PARQUET") {
        // the de-duplicated events, for the side-by-side DuckDB run (benches/duckdb_compare.py)
        let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut copy = events.clone();
        polars::prelude::ParquetWriter::new(file).finish(&mut copy).expect("parquet");
        println!("wrote {path}");
    }
    // finishing into MetricRows costs O(rows) memory (about 0.5 KiB a row); off unless asked for
    let finish = std::env::var("TIDEMARK_BENCH_FINISH").is_ok_and(|v| v == "1");
    let mut rows_out = 0;
    let total = Instant::now();
    for m in spec.metrics() {
        let t = Instant::now();
        let frame = plan::metric_frame(&events, schema, m, None).expect("plan");
        let d = t.elapsed().as_secs_f64();
        rows_out += frame.height();
        println!(
            "{:<16} {:>12.0} events/s  {:>8.2} s  {} rows  (peak RSS so far {:.0} MiB)",
            m.name,
            events.height() as f64 / d,
            d,
            frame.height(),
            vm_hwm_kib().unwrap_or(0) as f64 / 1024.0
        );
        if finish {
            let t = Instant::now();
            let rows = plan::rows_from_frame(&frame, schema, m, &origin, EventTime::UNIX_EPOCH).expect("rows");
            let d = t.elapsed().as_secs_f64();
            println!("{:<16} {:>12.0} rows/s    {:>8.2} s", "  finish", rows.len() as f64 / d, d);
        }
    }
    let d = total.elapsed().as_secs_f64() + dedupe_s;
    println!("{:<16} {:>12.0} events/s  {:>8.2} s  {rows_out} rows (dedupe + 3 metrics)", "all", n as f64 / d, d);
    println!("peak RSS (VmHWM): {:.0} MiB", vm_hwm_kib().unwrap_or(0) as f64 / 1024.0);
}
