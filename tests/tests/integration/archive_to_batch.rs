//! The raw archive the stream service writes (`tidemark_store::RawArchive`) is the batch layer's input:
//! a table written by one is read by the other, unchanged.

use tidemark_batch::{BatchRun, InputSource};
use tidemark_core::{AggValue, Dimensions, Duration, EventTime, PipelineSpec, SourceCoordinates};
use tidemark_store::{AppendOutcome, ArchiveRow, RawArchive};

/// 2026-11-23T06:00:00Z.
const T0: i64 = 1_795_413_600_000_000;
const SEC: i64 = 1_000_000;

fn event(partition: i32, offset: i64, id: &str, at_s: i64, page: &str, i: i64) -> ArchiveRow {
    let ts = T0 + at_s * SEC;
    ArchiveRow {
        event_id: id.to_owned(),
        event_time: EventTime::from_micros(ts).unwrap(),
        ingest_time: EventTime::from_micros(ts + 2 * SEC).unwrap(),
        coords: SourceCoordinates { source: "pageviews".into(), partition, offset },
        payload: serde_json::json!({ "id": id, "ts": ts, "page": page, "i": i }).to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_layer_computes_metrics_from_the_archive_the_stream_writes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let spec = PipelineSpec::parse(
        &format!(
            r#"
version = 1
name = "archive"
[source]
type = "file"
path = "events.jsonl"
[event]
id = "id"
time = {{ field = "ts", format = "epoch_us" }}
dimensions = ["page"]
values = {{ i = "int" }}
[time]
max_future_skew = "5m"
[[metrics]]
name = "per_page_1m"
dimensions = ["page"]
window = {{ type = "tumbling", size = "1m" }}
aggregates = [{{ name = "n", fn = "count" }}, {{ name = "sum_i", fn = "sum", field = "i" }}]
[stores]
raw_archive = "{root}/raw"
serving = "{root}/serving"
dead_letter = "{root}/dead"
batch_view = "{root}/view"
"#
        ),
        "archive.toml",
        Some(dir.path()),
    )
    .unwrap();
    let archive_url = spec.spec().stores.raw_archive.clone();
    let archive = RawArchive::open(archive_url.clone()).await.unwrap();

    // partition 0: offset 2 did not decode (not archived); partition 1 re-delivers e1 at another offset
    let first = vec![event(0, 0, "e1", 10, "/a", 5), event(0, 1, "e2", 20, "/a", 7), event(1, 0, "e4", 30, "/b", 2)];
    assert_eq!(archive.append(&first).await.unwrap(), AppendOutcome { written: 3, skipped: 0 });
    // the service crashed before committing its Kafka offsets: it replays partition 0 from offset 0
    let second = vec![
        event(0, 0, "e1", 10, "/a", 5),
        event(0, 1, "e2", 20, "/a", 7),
        event(0, 3, "e3", 70, "/b", 1),
        event(1, 1, "e1", 10, "/a", 5),
        event(1, 2, "e5", 90, "/a", -3),
    ];
    assert_eq!(archive.append(&second).await.unwrap(), AppendOutcome { written: 3, skipped: 2 });

    let from = EventTime::from_micros(T0).unwrap();
    let to = EventTime::from_micros(T0 + 120 * SEC).unwrap();
    let report = BatchRun::new(&spec, from, to)
        .input(InputSource::delta(archive_url))
        .session_lookaround(Duration::from_secs(60))
        .progress(false)
        .keep_rows(true)
        .run()
        .await
        .unwrap();
    assert_eq!(report.input_version, Some(2), "created at 0, two appends");
    assert_eq!((report.rows_read, report.invalid, report.duplicates, report.aggregated), (6, 0, 1, 5), "{report:?}");

    let got: Vec<(i64, String, u64, AggValue, AggValue)> = report
        .rows
        .iter()
        .map(|r| {
            assert_eq!(r.key.metric, "per_page_1m");
            assert_eq!(r.key.window.end().as_micros() - r.key.window.start().as_micros(), 60 * SEC);
            (
                (r.key.window.start().as_micros() - T0) / SEC,
                r.key.dims.encode(),
                r.events,
                r.values["n"],
                r.values["sum_i"],
            )
        })
        .collect();
    let page = |p: &str| Dimensions::new([("page".to_owned(), p.to_owned())]).encode();
    let expected = vec![
        (0, page("/a"), 2, AggValue::Int(2), AggValue::Int(12)),
        (0, page("/b"), 1, AggValue::Int(1), AggValue::Int(2)),
        (60, page("/a"), 1, AggValue::Int(1), AggValue::Int(-3)),
        (60, page("/b"), 1, AggValue::Int(1), AggValue::Int(1)),
    ];
    assert_eq!(got, expected);
}
