//! Helpers: specs, records and a harness that checks accounting after every call.

use tidemark_core::{EventTime, PipelineSpec, SourceCoordinates, ValidSpec};
use tidemark_stream::{Engine, Output, Record};

pub const INT_AGGS: &str = r#"[{ name = "n", fn = "count" }, { name = "s", fn = "sum", field = "v" },
  { name = "lo", fn = "min", field = "v" }, { name = "hi", fn = "max", field = "v" }]"#;

pub const ALL_AGGS: &str = r#"[{ name = "n", fn = "count" }, { name = "s", fn = "sum", field = "v" },
  { name = "lo", fn = "min", field = "v" }, { name = "hi", fn = "max", field = "v" },
  { name = "fs", fn = "sum", field = "f" }, { name = "fm", fn = "mean", field = "f" },
  { name = "ks", fn = "count_distinct", field = "u" }]"#;

/// A spec with the given `[time]` body and metrics `(name, window inline table)`, each by dimension `k`.
pub fn spec(time: &str, metrics: &[(&str, &str)], aggs: &str) -> ValidSpec {
    let mut text = format!(
        r#"version = 1
name = "t"
[source]
type = "file"
path = "/tmp/events.jsonl"
[event]
id = "id"
time = {{ field = "ts", format = "epoch_s" }}
dimensions = ["k", "u"]
values = {{ v = "int", f = "float" }}
[time]
{time}
[stores]
raw_archive = "memory://raw"
serving = "memory://serving"
dead_letter = "memory://dl"
batch_view = "memory://batch"
"#
    );
    for (name, window) in metrics {
        text.push_str(&format!(
            "[[metrics]]\nname = \"{name}\"\ndimensions = [\"k\"]\nwindow = {window}\naggregates = {aggs}\n"
        ));
    }
    PipelineSpec::parse(&text, "test.toml", None).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

pub fn s(x: i64) -> EventTime {
    EventTime::from_secs(x).unwrap()
}

/// Far enough in the future that no test event is a `future_event`.
pub fn received() -> EventTime {
    EventTime::parse_rfc3339("2100-01-01T00:00:00Z").unwrap()
}

pub fn payload(id: &str, ts: i64, k: &str, v: i64) -> Vec<u8> {
    format!(r#"{{"id":"{id}","ts":{ts},"k":"{k}","u":"u{}","v":{v},"f":{}}}"#, v.rem_euclid(3), v as f64 * 0.1)
        .into_bytes()
}

pub fn record(partition: i32, offset: i64, payload: Vec<u8>) -> Record {
    Record { coords: SourceCoordinates { source: "test".into(), partition, offset }, received_at: received(), payload }
}

/// An engine, its output, a processing clock and per-partition offsets.
pub struct Harness {
    pub engine: Engine,
    pub out: Output,
    pub now: EventTime,
    pub offsets: [i64; 8],
}

impl Harness {
    pub fn new(spec: &ValidSpec) -> Self {
        Harness { engine: Engine::new(spec), out: Output::default(), now: s(0), offsets: [0; 8] }
    }

    pub fn send_raw(&mut self, partition: i32, bytes: Vec<u8>) {
        let p = usize::try_from(partition).unwrap();
        let rec = record(partition, self.offsets[p], bytes);
        self.offsets[p] += 1;
        self.engine.process(&rec, self.now, &mut self.out);
        self.check();
    }

    /// Sends event `id` at event time `ts` seconds for key `k` with value `v` on partition 0.
    pub fn send(&mut self, id: &str, ts: i64, k: &str, v: i64) {
        self.send_raw(0, payload(id, ts, k, v));
    }

    pub fn advance(&mut self, secs: i64) {
        self.now = self.now.saturating_add(tidemark_core::Duration::from_micros(secs * 1_000_000).unwrap());
        self.engine.advance(self.now, &mut self.out);
        self.check();
    }

    pub fn drain(&mut self) {
        self.engine.drain(self.now, &mut self.out);
        self.check();
    }

    pub fn take(&mut self) -> Output {
        std::mem::take(&mut self.out)
    }

    fn check(&self) {
        for (p, a) in self.engine.accounts() {
            assert!(a.balanced(), "partition {p}: {a:?}");
        }
    }
}
