//! What the batch benches share: the pipeline spec (three metrics over one skewed key) and the generator.

/// The bench pipeline: 1-min tumbling, 5-min/1-min hopping and 30-s-gap sessions, each with
/// count/sum/min/max/mean, over events keyed by `user`.
pub const SPEC: &str = r#"
version = 1
name = "bench"
[source]
type = "file"
path = "/dev/null"
[event]
id = "id"
time = { field = "ts", format = "epoch_us" }
dimensions = ["user"]
values = { latency = "int", bytes = "float" }
[[metrics]]
name = "tumbling_1m"
dimensions = ["user"]
window = { type = "tumbling", size = "1m" }
aggregates = [
  { name = "n", fn = "count" }, { name = "sum", fn = "sum", field = "latency" },
  { name = "min", fn = "min", field = "latency" }, { name = "max", fn = "max", field = "latency" },
  { name = "mean", fn = "mean", field = "latency" }, { name = "bytes", fn = "sum", field = "bytes" },
]
[[metrics]]
name = "hopping_5m_1m"
dimensions = ["user"]
window = { type = "hopping", size = "5m", slide = "1m" }
aggregates = [
  { name = "n", fn = "count" }, { name = "sum", fn = "sum", field = "latency" },
  { name = "min", fn = "min", field = "latency" }, { name = "max", fn = "max", field = "latency" },
  { name = "mean", fn = "mean", field = "latency" }, { name = "bytes", fn = "sum", field = "bytes" },
]
[[metrics]]
name = "session_30s"
dimensions = ["user"]
window = { type = "session", gap = "30s" }
aggregates = [
  { name = "n", fn = "count" }, { name = "sum", fn = "sum", field = "latency" },
  { name = "min", fn = "min", field = "latency" }, { name = "max", fn = "max", field = "latency" },
  { name = "mean", fn = "mean", field = "latency" }, { name = "bytes", fn = "sum", field = "bytes" },
]
[stores]
raw_archive = "/tmp/tidemark-bench/raw"
serving = "/tmp/tidemark-bench/serving"
dead_letter = "/tmp/tidemark-bench/dead"
batch_view = "/tmp/tidemark-bench/view"
"#;

/// SplitMix64: a small, fast, seeded generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
