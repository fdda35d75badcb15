//! Any bytes through the event decoder: it returns an event or a reason code, never panics, and an event
//! it accepts obeys the schema's bounds.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tidemark_core::{EventTime, PipelineSpec, ValidSpec};

const SPEC: &str = r#"
version = 1
name = "fuzz"
[source]
type = "file"
path = "/dev/null"
[event]
id = "id"
time = { field = "ts", format = "rfc3339" }
dimensions = ["page", "country"]
values = { ms = "int", kb = "float" }
max_event_bytes = 4096
[time]
max_future_skew = "5m"
[[metrics]]
name = "views"
dimensions = ["page"]
window = { type = "tumbling", size = "1m" }
aggregates = [{ name = "n", fn = "count" }]
[stores]
raw_archive = "file:///tmp/fuzz/raw"
serving = "file:///tmp/fuzz/serving"
dead_letter = "file:///tmp/fuzz/dead"
batch_view = "file:///tmp/fuzz/batch"
"#;

static SCHEMA: LazyLock<ValidSpec> = LazyLock::new(|| PipelineSpec::parse(SPEC, "fuzz.toml", None).expect("fuzz spec"));

fuzz_target!(|data: &[u8]| {
    let received = EventTime::from_micros(1_795_413_600_000_000).expect("a valid time");
    match SCHEMA.schema().decode(data, received) {
        Ok(event) => {
            assert!(data.len() <= 4096);
            assert!(event.time.as_micros() >= 0, "{event:?}");
            assert!(event.time <= received.saturating_add(tidemark_core::Duration::from_secs(300)), "{event:?}");
            assert!(std::str::from_utf8(data).is_ok());
        }
        Err(e) => assert!(!e.detail.is_empty() || e.reason.as_str() == "empty", "{e:?}"),
    }
});
