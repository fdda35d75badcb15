//! The malformed-event corpus (`tests/corpus/malformed/cases.toml`: 79 cases in 20 categories) replayed
//! through the decoder, the stream service (file source → Delta stores) and the batch layer (JSON Lines):
//! every case is dead-lettered with its reason code and its source coordinates by both layers, nothing
//! panics, and the stream's accounting balances (consumed = aggregated + late + dead-lettered + duplicates).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tidemark_batch::{BatchRun, InputSource};
use tidemark_core::{EventTime, PipelineSpec, ValidSpec};
use tidemark_store::{DeadLetterStore, MetricFilter, RawArchive, ServingStore};
use tidemark_stream::metrics::Metrics;
use tidemark_stream::{FileSource, ManualClock, ReceivedAt, Service, ServiceConfig, Sinks, Stopped};

/// 2026-11-23T06:00:00Z: when every event of the corpus is received.
const RECEIVED_US: i64 = 1_795_413_600_000_000;
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/malformed/cases.toml");

#[derive(Debug)]
struct Case {
    category: String,
    reason: String,
    payload: Vec<u8>,
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit")).collect()
}

fn corpus() -> Vec<Case> {
    let doc: toml::Table = std::fs::read_to_string(CORPUS).unwrap().parse().unwrap();
    let cases: Vec<Case> = doc["case"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let text = c.get("text").and_then(|t| t.as_str());
            let payload = match (text, c.get("hex").and_then(|h| h.as_str())) {
                (Some(t), None) => t.as_bytes().to_vec(),
                (None, Some(h)) => hex(h),
                _ => panic!("a case needs exactly one of text and hex: {c:?}"),
            };
            assert!(!payload.contains(&b'\n'), "a case must fit on one JSON Lines line: {c:?}");
            Case {
                category: c["category"].as_str().unwrap().to_owned(),
                reason: c["reason"].as_str().unwrap().to_owned(),
                payload,
            }
        })
        .collect();
    let categories: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.category.as_str()).collect();
    assert!(cases.len() >= 60 && categories.len() >= 15, "{} cases, {} categories", cases.len(), categories.len());
    cases
}

fn spec(dir: &Path) -> ValidSpec {
    let url = |s: &str| format!("file://{}", dir.join(s).display());
    let text = format!(
        r#"
version = 1
name = "corpus"
[source]
type = "file"
path = "{events}"
[event]
id = "id"
time = {{ field = "ts", format = "rfc3339" }}
dimensions = ["page"]
values = {{ ms = "int", kb = "float" }}
max_event_bytes = 1024
[time]
watermark_delay = "1s"
allowed_lateness = "1h"
max_future_skew = "5m"
[[metrics]]
name = "views"
dimensions = ["page"]
window = {{ type = "tumbling", size = "1m" }}
aggregates = [{{ name = "n", fn = "count" }}, {{ name = "ms", fn = "sum", field = "ms" }}, {{ name = "kb", fn = "sum", field = "kb" }}]
[stores]
raw_archive = "{raw}"
serving = "{serving}"
dead_letter = "{dead}"
batch_view = "{batch}"
"#,
        events = dir.join("events.jsonl").display(),
        raw = url("raw"),
        serving = url("serving"),
        dead = url("dead"),
        batch = url("batch"),
    );
    PipelineSpec::parse(&text, "corpus.toml", Some(dir)).unwrap()
}

/// Writes the events file: a good event before every case (so each bad line sits between good ones), a
/// last good event; returns the file's line count. Line `2k + 1` holds case `k`.
fn write_events(path: &Path, cases: &[Case]) -> usize {
    // odd but valid: a page with a NUL character (escaped \u0000) must be aggregated and stored, not stop
    // the service (issue 8: the stores refused it and the service retried the flush forever)
    let good = |i: usize| {
        let page = if i.is_multiple_of(10) { r"/nul\u0000".to_owned() } else { format!("/p{}", i % 3) };
        format!(r#"{{"id":"good{i}","ts":"2026-11-23T05:{:02}:00Z","page":"{page}","ms":{i},"kb":0.25}}"#, i % 60)
    };
    let mut bytes = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        bytes.extend_from_slice(good(i).as_bytes());
        bytes.push(b'\n');
        bytes.extend_from_slice(&case.payload);
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(good(cases.len()).as_bytes());
    bytes.push(b'\n');
    std::fs::write(path, bytes).unwrap();
    // the batch layer takes a JSON Lines file's receive time from its modification time
    let received = std::time::UNIX_EPOCH + std::time::Duration::from_micros(RECEIVED_US as u64);
    std::fs::File::options().write(true).open(path).unwrap().set_modified(received).unwrap();
    2 * cases.len() + 1
}

fn received_at() -> EventTime {
    EventTime::from_micros(RECEIVED_US).unwrap()
}

#[test]
fn every_corpus_case_fails_decoding_with_its_reason_code() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    let mut wrong = Vec::new();
    for case in corpus() {
        match spec.schema().decode(&case.payload, received_at()) {
            Ok(event) => wrong.push(format!("{}: decoded as {event:?}: {:?}", case.category, excerpt(&case.payload))),
            Err(e) if e.reason.as_str() != case.reason => wrong.push(format!(
                "{}: expected {}, got {} ({e}): {:?}",
                case.category,
                case.reason,
                e.reason.as_str(),
                excerpt(&case.payload)
            )),
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{} cases misclassified:\n{}", wrong.len(), wrong.join("\n"));
}

fn excerpt(payload: &[u8]) -> String {
    String::from_utf8_lossy(&payload[..payload.len().min(100)]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_service_dead_letters_every_corpus_case_with_coordinates() {
    let dir = tempfile::tempdir().unwrap();
    let cases = corpus();
    let events = dir.path().join("events.jsonl");
    let lines = write_events(&events, &cases);
    let spec = spec(dir.path());
    let url = |s: &str| format!("file://{}", dir.path().join(s).display());
    let store: Arc<dyn ServingStore> = Arc::from(tidemark_store::open(&spec.serving_store()).await.unwrap());
    store.init().await.unwrap();
    let dead_letters = Arc::new(DeadLetterStore::open(&url("dead")).unwrap());
    let sinks = Sinks {
        store: store.clone(),
        dead_letters: dead_letters.clone(),
        archive: Some(Arc::new(RawArchive::open(url("raw")).await.unwrap())),
    };
    let clock = Arc::new(ManualClock::new(received_at()));
    let config = ServiceConfig { finish_at_end: true, ..Default::default() };
    let metrics = Arc::new(Metrics::new());
    let source = FileSource::new(&events, ReceivedAt::Clock(clock.clone()));
    let service = Service::start(&spec, source, sinks, clock, config, metrics.clone()).await.unwrap();
    let summary = service.run(Arc::new(AtomicBool::new(false))).await.unwrap();
    assert_eq!(summary.stopped, Stopped::EndOfInput);

    let mut letters = dead_letters.list().await.unwrap();
    letters.sort_by_key(|d| d.coordinates.offset);
    let got: Vec<(i64, &str)> = letters.iter().map(|d| (d.coordinates.offset, d.reason.as_str())).collect();
    let expected: Vec<(i64, &str)> =
        cases.iter().enumerate().map(|(k, c)| (2 * k as i64 + 1, c.reason.as_str())).collect();
    assert_eq!(got, expected);
    for d in &letters {
        assert_eq!((d.coordinates.source.as_str(), d.coordinates.partition), (events.to_str().unwrap(), 0));
        assert!(!d.detail.is_empty(), "{d:?}");
    }

    let text = metrics.encode();
    // a counter a partition never incremented has no series yet: 0
    let series = |name: &str| -> u64 {
        let prefix = format!("{name}{{partition=\"0\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse().unwrap())
    };
    let good = (lines - cases.len()) as u64;
    assert_eq!(series("tidemark_consumed_total"), lines as u64);
    assert_eq!(series("tidemark_dead_lettered_total"), cases.len() as u64);
    assert_eq!(series("tidemark_aggregated_total"), good);
    assert_eq!((series("tidemark_late_routed_total"), series("tidemark_duplicates_total")), (0, 0));

    // the good events all reached the serving store, and only they were archived
    let rows = store.read_range(&MetricFilter::All, EventTime::MIN, EventTime::MAX).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.events).sum::<u64>(), good);
    let nul_events: u64 = rows.iter().filter(|r| r.key.dims.get("page") == Some("/nul\0")).map(|r| r.events).sum();
    assert_eq!(nul_events, (cases.len() / 10 + 1) as u64, "good events 0..=n with i % 10 == 0");
    let archived = RawArchive::open(url("raw")).await.unwrap().read_all().await.unwrap();
    assert_eq!(archived.len() as u64, good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_layer_dead_letters_every_corpus_case_with_the_same_codes() {
    let dir = tempfile::tempdir().unwrap();
    let cases = corpus();
    let events = dir.path().join("events.jsonl");
    let lines = write_events(&events, &cases);
    let spec = spec(dir.path());
    let from = EventTime::from_micros(RECEIVED_US - 3_600_000_000).unwrap();
    let to = received_at();
    let report = BatchRun::new(&spec, from, to)
        .input(InputSource::json_lines(format!("file://{}", events.display())))
        .progress(false)
        .run()
        .await
        .unwrap();
    assert_eq!(report.rows_read, lines as u64);
    assert_eq!(report.invalid, cases.len() as u64);
    assert_eq!((report.duplicates, report.outside_range, report.aggregated), (0, 0, (lines - cases.len()) as u64));
    let got: Vec<(i64, &str)> = report.dead_letters.iter().map(|d| (d.at.offset, d.reason.as_str())).collect();
    let expected: Vec<(i64, &str)> =
        cases.iter().enumerate().map(|(k, c)| (2 * k as i64 + 1, c.reason.as_str())).collect();
    assert_eq!(got, expected);
    for d in &report.dead_letters {
        assert!(d.at.source.ends_with("events.jsonl") && d.at.partition == 0, "{:?}", d.at);
    }
}
