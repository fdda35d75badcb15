//! Decoder throughput: `cargo bench -p tidemark-core --bench decode`. Prints events/s and MB/s for a
//! page-view event of the example spec's shape (about 190 bytes).

use std::hint::black_box;
use std::time::Instant;

use tidemark_core::{EventTime, PipelineSpec};

fn main() {
    let text = include_str!("../../examples/pageviews.toml");
    let spec = PipelineSpec::parse(text, "pageviews.toml", Some(std::path::Path::new("/tmp"))).expect("valid spec");
    let schema = spec.schema();
    let n = 1_000_000usize;
    let lines: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"event_id":"e-{i:08}","ts":"2026-11-24T08:{:02}:{:02}.{:03}Z","user":"u{}","page":"/p/{}","country":"{}","latency_ms":{},"bytes":{}.5}}"#,
                (i / 60_000) % 60,
                (i / 1000) % 60,
                i % 1000,
                i % 10_000,
                i % 97,
                ["DE", "FR", "US", "BR"][i % 4],
                i % 900,
                i % 5000
            )
        })
        .collect();
    let bytes: usize = lines.iter().map(String::len).sum();
    let now = EventTime::parse_rfc3339("2026-11-24T09:00:00Z").expect("valid time");
    for round in 0..3 {
        let start = Instant::now();
        let mut ok = 0usize;
        for l in &lines {
            if black_box(schema.decode(l.as_bytes(), now)).is_ok() {
                ok += 1;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(ok, n, "every generated event decodes");
        println!(
            "decode round {round}: {n} events, {:.0} events/s, {:.0} MB/s (avg {} bytes/event)",
            n as f64 / secs,
            bytes as f64 / secs / 1e6,
            bytes / n
        );
    }
}
