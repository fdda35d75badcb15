//! Engine throughput, end to end on one core: file replay -> decode -> window -> flush to an in-memory
//! sink. JSON events, 10k keys, mild disorder (up to 2 s), count/sum/min/max by key.
//!
//! `cargo bench -p tidemark-stream --bench engine`. Environment: `TIDEMARK_BENCH_EVENTS` (default
//! 2,000,000), `TIDEMARK_BENCH_RATE` (events per second of event time, default 20,000: it sets how many
//! events live window state and the de-duplication set hold), `TIDEMARK_BENCH_ONLY` (a scenario name
//! prefix). Rates are given per second of this thread's CPU time (from /proc, Linux) and of wall time.

use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::time::Instant;

use tidemark_core::{EventTime, PipelineSpec, RowChange, SourceCoordinates};
use tidemark_stream::{Clock, Engine, FileReplay, Output, ReceivedAt, Record, SystemClock};

const KEYS: u64 = 10_000;
fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// CPU time of this thread in seconds (Linux `/proc/thread-self/schedstat`), if available.
fn cpu_secs() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

struct Timer(Instant, Option<f64>);

impl Timer {
    fn start() -> Self {
        Timer(Instant::now(), cpu_secs())
    }

    /// Wall and CPU seconds since the start.
    fn elapsed(&self) -> (f64, Option<f64>) {
        (self.0.elapsed().as_secs_f64(), self.1.zip(cpu_secs()).map(|(a, b)| b - a))
    }

    /// "<n> events: <x> events/s per CPU second (<y> per wall second)", not counting `excluded`.
    fn report(&self, n: u64, excluded: (f64, Option<f64>)) -> String {
        let (wall, cpu) = self.elapsed();
        let wall = wall - excluded.0;
        let cpu = match (cpu, excluded.1) {
            (Some(c), Some(x)) => format!("{:>9.0} events/s CPU", n as f64 / (c - x)),
            _ => "      n/a events/s CPU".to_owned(),
        };
        format!("{n} events: {cpu}, {:>9.0} events/s wall ({wall:.2} s)", n as f64 / wall)
    }
}

fn spec(window: &str) -> tidemark_core::ValidSpec {
    let text = format!(
        r#"version = 1
name = "bench"
[source]
type = "file"
path = "/tmp/bench.jsonl"
[event]
id = "id"
time = {{ field = "ts", format = "epoch_ms" }}
dimensions = ["k"]
values = {{ v = "int" }}
[time]
watermark_delay = "5s"
allowed_lateness = "30s"
[[metrics]]
name = "m"
dimensions = ["k"]
window = {window}
aggregates = [{{ name = "n", fn = "count" }}, {{ name = "s", fn = "sum", field = "v" }},
  {{ name = "lo", fn = "min", field = "v" }}, {{ name = "hi", fn = "max", field = "v" }}]
[stores]
raw_archive = "memory://raw"
serving = "memory://serving"
dead_letter = "memory://dl"
batch_view = "memory://batch"
"#
    );
    PipelineSpec::parse(&text, "bench.toml", None).unwrap_or_else(|e| panic!("{e}"))
}

fn write_events(path: &std::path::Path, n: u64, rate: u64) {
    let start_ms: i64 = 1_795_000_000_000; // 2026-11-18
    let mut w = BufWriter::new(std::fs::File::create(path).expect("create bench file"));
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = start_ms + i64::try_from(i * 1_000 / rate).unwrap_or(0);
        let jitter = i64::try_from(x % 2_000).unwrap_or(0); // up to 2 s behind
        let key = (x >> 20) % KEYS;
        let v = (x >> 40) % 1_000;
        writeln!(w, r#"{{"id":"{i}","ts":{},"k":"key{key}","v":{v}}}"#, base - jitter).expect("write bench file");
    }
    w.flush().expect("flush bench file");
}

fn run(name: &str, window: &str, path: &std::path::Path, n: u64) {
    if std::env::var("TIDEMARK_BENCH_ONLY").is_ok_and(|only| !name.starts_with(&only)) {
        return;
    }
    let spec = spec(window);
    let mut engine = Engine::new(&spec);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut out = Output::default();
    let (mut upserts, mut other) = (0u64, 0u64);
    let mut sink = |out: &mut Output| {
        for c in out.changes.drain(..) {
            match c {
                RowChange::Upsert(_) => upserts += 1,
                _ => other += 1,
            }
        }
        out.clear();
    };
    let timer = Timer::start();
    let mut replay = FileReplay::open(path, ReceivedAt::Clock(clock.clone())).expect("open bench file");
    let mut rec = Record {
        coords: SourceCoordinates { source: String::new(), partition: 0, offset: 0 },
        received_at: EventTime::UNIX_EPOCH,
        payload: Vec::new(),
    };
    let mut i = 0u64;
    let mut excluded = (0.0, Some(0.0));
    while replay.read_into(&mut rec).expect("read bench file") {
        engine.process(&rec, rec.received_at, &mut out);
        i += 1;
        if i.is_multiple_of(10_000) {
            sink(&mut out);
        }
        if i == n / 2 {
            let t = Timer::start();
            checkpoint_cost(&spec, &engine);
            excluded = t.elapsed();
        }
    }
    engine.drain(clock.now(), &mut out);
    sink(&mut out);
    let report = timer.report(n, excluded);
    let a = engine.accounts()[&0];
    assert!(a.balanced() && a.consumed == n, "{a:?}");
    println!("{name:<22} {report}  ({upserts} upserts, {other} other changes, {} late)", a.late_ledger_entries);
}

/// The size and cost of a full checkpoint (and its restore) of the state at hand; not in the rate.
fn checkpoint_cost(spec: &tidemark_core::ValidSpec, engine: &Engine) {
    let started = Instant::now();
    let blob = engine.checkpoint().expect("checkpoint");
    let encoded = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let restored = Engine::restore(spec, &blob).expect("restore");
    let decoded = started.elapsed().as_secs_f64();
    assert_eq!(restored.live_rows(), engine.live_rows());
    println!(
        "    checkpoint at half-time: {} live rows, {} live events, {:.1} MB, written in {encoded:.2} s, restored in {decoded:.2} s",
        engine.live_rows(),
        engine.remembered_events(),
        blob.len() as f64 / 1e6
    );
}

fn main() {
    let n = env_u64("TIDEMARK_BENCH_EVENTS", 2_000_000);
    let rate = env_u64("TIDEMARK_BENCH_RATE", 20_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("events.jsonl");
    write_events(&path, n, rate);
    println!("{n} JSON events, {KEYS} keys, {rate} events per second of event time, up to 2 s disorder");

    // the replay source and the decoder alone, for reference
    let spec = spec(r#"{ type = "tumbling", size = "1m" }"#);
    let now = EventTime::parse_rfc3339("2026-11-24T00:00:00Z").expect("time");
    let timer = Timer::start();
    let mut decoded = 0u64;
    for rec in FileReplay::open(&path, ReceivedAt::Clock(Arc::new(SystemClock))).expect("open") {
        decoded += u64::from(spec.schema().decode(&rec.expect("read").payload, now).is_ok());
    }
    assert_eq!(decoded, n);
    println!("{:<22} {}", "replay + decode only", timer.report(n, (0.0, Some(0.0))));

    run("tumbling 1m", r#"{ type = "tumbling", size = "1m" }"#, &path, n);
    run("hopping 5m / 1m", r#"{ type = "hopping", size = "5m", slide = "1m" }"#, &path, n);
    run("session gap 30s", r#"{ type = "session", gap = "30s" }"#, &path, n);
}
