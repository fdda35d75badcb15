//! The same events read from the Delta archive, Parquet files and JSON Lines files give identical
//! output, equal to core's accumulators over the decoded events; invalid rows are counted with the
//! decoder's reason codes and every row read is accounted for.

use std::collections::{BTreeMap, HashSet};

use tidemark_batch::{BatchReport, BatchRun, InputSource};
use tidemark_core::{Duration, EventTime, MetricRow, Origin, ReasonCode, ValidSpec, Window};

use crate::common::{
    ALL_AGGREGATES, RawRow, Rng, T0, assert_rows_match, file_url, raw_rows, seed, spec, write_archive, write_jsonl,
    write_parquet,
};
use crate::equivalence::reference;

pub fn three_metrics() -> String {
    format!(
        r#"
[[metrics]]
name = "per_page_1m"
dimensions = ["page"]
window = {{ type = "tumbling", size = "1m" }}
{ALL_AGGREGATES}
[[metrics]]
name = "per_k_5m"
dimensions = ["k"]
window = {{ type = "hopping", size = "5m", slide = "1m", offset = "10s" }}
{ALL_AGGREGATES}
[[metrics]]
name = "user_sessions"
dimensions = ["user"]
window = {{ type = "session", gap = "30s" }}
{ALL_AGGREGATES}
"#
    )
}

/// Core's rows for the run's range over every valid row (first copy of an id in receive order wins).
pub fn expected_rows(spec: &ValidSpec, rows: &[RawRow], from: EventTime, to: EventTime) -> Vec<MetricRow> {
    let mut ordered: Vec<&RawRow> = rows.iter().collect();
    ordered.sort_by_key(|r| (r.ingest_us, r.partition, r.offset));
    let events: Vec<_> = ordered
        .iter()
        .filter_map(|r| {
            spec.schema().decode(r.payload.as_bytes(), EventTime::from_micros(r.ingest_us).expect("t")).ok()
        })
        .collect();
    let range = Window::new(from, to).expect("range");
    let origin = Origin::Batch { run_id: "ref".into(), epoch: 0 };
    let mut out: Vec<MetricRow> = spec
        .metrics()
        .iter()
        .flat_map(|m| reference(m, &events, &origin, EventTime::UNIX_EPOCH))
        .filter(|r| r.key.window.overlaps(&range))
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

fn check_accounting(r: &BatchReport) {
    assert_eq!(
        r.rows_read,
        r.invalid + r.outside_range + r.duplicates + r.aggregated,
        "every row read is invalid, outside the range, a duplicate or aggregated: {r:?}"
    );
    assert_eq!(r.invalid, r.invalid_by_reason.values().sum::<u64>());
    assert_eq!(r.invalid as usize, r.dead_letters.len());
}

/// Copies the files under `dir` (recursively) to `url` in the process's shared in-memory object store.
async fn copy_to_memory(dir: &std::path::Path, url: &str) {
    use object_store::ObjectStoreExt as _;
    let (store, prefix) = tidemark_store::objects::open(&url::Url::parse(url).unwrap(), &Default::default()).unwrap();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let rel = path.strip_prefix(dir).unwrap();
            let mut to = prefix.clone();
            for part in rel.iter() {
                to = to.join(part.to_str().unwrap());
            }
            store.put(&to, std::fs::read(&path).unwrap().into()).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_parquet_and_jsonl_inputs_give_identical_output() {
    let mut rng = Rng::new(seed("delta_parquet_and_jsonl_inputs_give_identical_output"));
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = raw_rows(&mut rng, 3000);
    write_archive(&dir.path().join("raw"), &rows, 3).await;
    write_parquet(&dir.path().join("parquet"), &rows, 3);
    write_jsonl(&dir.path().join("jsonl"), &rows, 2);
    let spec = spec(&three_metrics(), &dir.path().display().to_string());
    // 40 minutes in the middle of the two hours, not aligned to any window
    let from = EventTime::from_micros(T0 + 30 * 60_000_000 + 7_000_000).expect("t");
    let to = EventTime::from_micros(T0 + 70 * 60_000_000 + 13_000_000).expect("t");
    let expected = expected_rows(&spec, &rows, from, to);
    assert!(expected.len() > 100, "the fixture yields rows in range");

    // the same three inputs copied to an in-memory object store (memory://), read through object_store
    // like s3:// (cli/tests/s3.rs runs the loop against a real S3-compatible server)
    let memory = "memory://batch-inputs-test";
    for name in ["raw", "parquet", "jsonl"] {
        copy_to_memory(&dir.path().join(name), &format!("{memory}/{name}")).await;
    }
    let inputs = [
        ("delta", InputSource::delta(file_url(&dir.path().join("raw")))),
        ("parquet", InputSource::parquet(file_url(&dir.path().join("parquet")))),
        ("jsonl", InputSource::json_lines(file_url(&dir.path().join("jsonl")))),
        ("memory delta", InputSource::delta(format!("{memory}/raw"))),
        ("memory parquet", InputSource::parquet(format!("{memory}/parquet/"))),
        ("memory jsonl", InputSource::json_lines(format!("{memory}/jsonl/"))),
    ];
    let mut reports = Vec::new();
    for (name, input) in inputs {
        let view = file_url(&dir.path().join(format!("view-{name}")));
        let r = BatchRun::new(&spec, from, to)
            .input(input)
            .batch_view(view)
            .session_lookaround(Duration::from_secs(120))
            .progress(false)
            .keep_rows(true)
            .run()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        check_accounting(&r);
        assert_rows_match(&spec, &expected, &r.rows, name);
        reports.push((name, r));
    }
    let (_, delta) = &reports[0];
    assert_eq!(delta.input_version, Some(2), "three appends");
    assert!(delta.warnings.is_empty(), "{:?}", delta.warnings);
    for (name, r) in &reports[1..] {
        assert_eq!(r.duplicates, delta.duplicates, "{name}");
        assert_eq!(r.aggregated, delta.aggregated, "{name}");
        assert_eq!(r.rows_written, delta.rows_written, "{name}");
        assert_eq!(r.windows_written, delta.windows_written, "{name}");
        // the files have no event-time statistics, so they are read whole: every invalid row is seen
        let all_invalid: BTreeMap<ReasonCode, u64> = rows
            .iter()
            .filter_map(|x| spec.schema().decode(x.payload.as_bytes(), EventTime::MAX).err())
            .fold(BTreeMap::new(), |mut m, e| {
                *m.entry(e.reason).or_default() += 1;
                m
            });
        assert_eq!(r.invalid_by_reason, all_invalid, "{name}");
        assert_eq!(r.rows_read as usize, rows.len(), "{name}");
    }
    // dead letters carry source coordinates: the archive's (topic, partition, offset), the file's line
    let jsonl = &reports[2].1;
    let first = jsonl.dead_letters.first().expect("the fixture has invalid rows");
    assert!(first.at.source.ends_with(".jsonl"), "{:?}", first.at);
    let coords: HashSet<(String, i64)> =
        jsonl.dead_letters.iter().map(|d| (d.at.source.clone(), d.at.offset)).collect();
    assert_eq!(coords.len(), jsonl.dead_letters.len(), "each dead letter has its own coordinates");
    for d in &jsonl.dead_letters {
        let path = d.at.source.strip_prefix("file://").expect("a file URL");
        let text = std::fs::read_to_string(path).expect("the dead letter's file");
        let line = text.split('\n').nth(usize::try_from(d.at.offset).expect("line")).expect("the line");
        assert_eq!(line, d.payload, "{}", d.at);
    }
    for d in &delta.dead_letters {
        let raw = rows.iter().find(|r| r.offset == d.at.offset).expect("the coordinates find the row");
        assert_eq!(raw.payload, d.payload);
        assert_eq!(d.at.source, "pageviews");
        assert_eq!(
            Some(d.reason),
            spec.schema().decode(raw.payload.as_bytes(), EventTime::MAX).err().map(|e| e.reason)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_files_are_pruned_by_event_time_statistics() {
    let mut rng = Rng::new(seed("delta_files_are_pruned_by_event_time_statistics"));
    let dir = tempfile::tempdir().expect("tempdir");
    // four commits, each with events of one half hour: statistics separate them
    let mut rows = raw_rows(&mut rng, 2000);
    rows.retain(|r| !r.event_id.starts_with("bad"));
    rows.sort_by_key(|r| r.event_time_us);
    write_archive(&dir.path().join("raw"), &rows, 4).await;
    let spec = spec(&three_metrics(), &dir.path().display().to_string());
    let from = EventTime::from_micros(T0 + 5 * 60_000_000).expect("t");
    let to = EventTime::from_micros(T0 + 10 * 60_000_000).expect("t");
    let run = BatchRun::new(&spec, from, to)
        .input(InputSource::delta(file_url(&dir.path().join("raw"))))
        .batch_view(file_url(&dir.path().join("view")))
        .session_lookaround(Duration::from_secs(60))
        .progress(false)
        .keep_rows(true);
    let plan = run.clone().dry_run(true).run().await.expect("dry run");
    assert!(!plan.files.is_empty() && plan.files.len() < 4, "pruned to the first commit's files: {:?}", plan.files);
    assert!(plan.estimated_rows.is_some_and(|n| n > 0));
    assert_eq!(plan.metrics[0].planned_windows, Some(5), "five 1m windows in [5m, 10m)");
    assert!(!dir.path().join("view").join("_delta_log").exists(), "a dry run writes nothing");
    let r = run.run().await.expect("run");
    check_accounting(&r);
    assert_eq!(r.files.len(), plan.files.len());
    assert!(r.outside_range > 0, "whole files are read; rows outside the range are counted");
    assert_rows_match(&spec, &expected_rows(&spec, &rows, from, to), &r.rows, "pruned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_run_equals_an_unchunked_run() {
    let mut rng = Rng::new(seed("a_chunked_run_equals_an_unchunked_run"));
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = raw_rows(&mut rng, 3000);
    write_archive(&dir.path().join("raw"), &rows, 2).await;
    let spec = spec(&three_metrics(), &dir.path().display().to_string());
    let from = EventTime::from_micros(T0 + 20 * 60_000_000 + 500_000).expect("t");
    let to = EventTime::from_micros(T0 + 65 * 60_000_000).expect("t");
    let run = |chunk: Option<Duration>, view: &str| {
        let mut r = BatchRun::new(&spec, from, to)
            .input(InputSource::delta(file_url(&dir.path().join("raw"))))
            .batch_view(file_url(&dir.path().join(view)))
            .session_lookaround(Duration::from_secs(90))
            .progress(false)
            .keep_rows(true);
        if let Some(c) = chunk {
            r = r.chunk(c);
        }
        r.run()
    };
    let whole = run(None, "view-whole").await.expect("run");
    // 7-minute chunks: not aligned with the 1m/5m windows' starts relative to `from`
    let chunked = run(Some(Duration::from_secs(420)), "view-chunked").await.expect("run");
    check_accounting(&whole);
    check_accounting(&chunked);
    assert_rows_match(&spec, &whole.rows, &chunked.rows, "chunked vs whole");
    assert_rows_match(&spec, &expected_rows(&spec, &rows, from, to), &chunked.rows, "chunked vs core");
    assert_eq!(chunked.rows_written, whole.rows_written);
    assert_eq!(chunked.windows_written, whole.windows_written);
    assert_eq!(chunked.invalid_by_reason, whole.invalid_by_reason, "a bad row read by two chunks is one dead letter");
    assert_eq!(chunked.dead_letters, whole.dead_letters);
    assert_eq!(chunked.view_version, Some(0), "all chunks in one commit");
}

/// Issue 4: a run split into parts (by event id to de-duplicate, then by each metric's key, spilled to
/// disk) gives the rows of a run held in memory, also when copies of an id disagree about their dimensions
/// (so an id's copies fall under different keys) and when combined with chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_4_a_run_split_into_spilled_parts_equals_a_run_in_memory() {
    let mut rng = Rng::new(seed("issue_4_a_run_split_into_spilled_parts_equals_a_run_in_memory"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rows = raw_rows(&mut rng, 3000);
    let first_offset = rows.iter().map(|r| r.offset).max().unwrap_or(0) + 1;
    let valid: Vec<RawRow> = rows.iter().filter(|r| r.event_id.starts_with("ev-")).take(60).cloned().collect();
    for (offset, (n, r)) in (first_offset..).zip(valid.into_iter().enumerate()) {
        let mut payload: serde_json::Value = serde_json::from_str(&r.payload).expect("json");
        payload["user"] = format!("u{}", 30 + n % 5).into();
        payload["page"] = "/other".into();
        payload["k"] = "c".into();
        // half of these copies arrive first and win, half arrive later and lose
        let ingest_us = if n % 2 == 0 { r.ingest_us - 1 } else { r.ingest_us + 1_000_000 };
        rows.push(RawRow { payload: payload.to_string(), ingest_us, offset, ..r });
    }
    write_archive(&dir.path().join("raw"), &rows, 3).await;
    let spec = spec(&three_metrics(), &dir.path().display().to_string());
    let from = EventTime::from_micros(T0 + 20 * 60_000_000 + 500_000).expect("t");
    let to = EventTime::from_micros(T0 + 65 * 60_000_000).expect("t");
    let spill = tempfile::tempdir().expect("tempdir");
    let run = |part_events: Option<u64>, chunk: Option<Duration>, view: &str| {
        let mut r = BatchRun::new(&spec, from, to)
            .input(InputSource::delta(file_url(&dir.path().join("raw"))))
            .batch_view(file_url(&dir.path().join(view)))
            .session_lookaround(Duration::from_secs(90))
            .spill_dir(spill.path())
            .progress(false)
            .keep_rows(true);
        if let Some(n) = part_events {
            r = r.part_events(n);
        }
        if let Some(c) = chunk {
            r = r.chunk(c);
        }
        r.run()
    };
    let whole = run(None, None, "view-memory").await.expect("run");
    assert_eq!((whole.parts, whole.spilled_bytes), (1, 0), "{whole:?}");
    let expected = expected_rows(&spec, &rows, from, to);
    assert_rows_match(&spec, &expected, &whole.rows, "memory vs core");
    for (part_events, chunk) in [(400, None), (1000, Some(Duration::from_secs(420)))] {
        let split = run(Some(part_events), chunk, &format!("view-{part_events}")).await.expect("run");
        let context = format!("{part_events} events per part, chunk {chunk:?}");
        assert!(split.parts >= 2 && split.spilled_bytes > 0, "{context}: not split: {split:?}");
        check_accounting(&split);
        assert_rows_match(&spec, &whole.rows, &split.rows, &context);
        assert_eq!(split.rows_written, whole.rows_written, "{context}");
        assert_eq!(split.windows_written, whole.windows_written, "{context}");
        assert_eq!(split.metrics, whole.metrics, "{context}");
        assert_eq!(split.dead_letters, whole.dead_letters, "{context}");
        if chunk.is_none() {
            assert_eq!((split.duplicates, split.aggregated), (whole.duplicates, whole.aggregated), "{context}");
        }
        assert_eq!(split.view_version, Some(0), "{context}: one commit");
    }
    // every spill directory is gone once its run ended
    assert_eq!(std::fs::read_dir(spill.path()).expect("spill dir").count(), 0);
}

/// A read whose sessions touch its edge is widened and read again; the spills of the abandoned reads count
/// in `spilled_bytes` too, not only the last read's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_4_spilled_bytes_count_the_reads_a_widening_abandoned() {
    let mut rng = Rng::new(seed("issue_4_spilled_bytes_count_the_reads_a_widening_abandoned"));
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = raw_rows(&mut rng, 3000);
    write_archive(&dir.path().join("raw"), &rows, 3).await;
    let sessions_only = format!(
        r#"
[[metrics]]
name = "user_sessions"
dimensions = ["user"]
window = {{ type = "session", gap = "30s" }}
{ALL_AGGREGATES}
"#
    );
    let spec = spec(&sessions_only, &dir.path().display().to_string());
    let from = EventTime::from_micros(T0 + 20 * 60_000_000).expect("t");
    let to = EventTime::from_micros(T0 + 40 * 60_000_000).expect("t");
    let spill = tempfile::tempdir().expect("tempdir");
    let run = |lookaround: Duration, view: &str| {
        BatchRun::new(&spec, from, to)
            .input(InputSource::delta(file_url(&dir.path().join("raw"))))
            .batch_view(file_url(&dir.path().join(view)))
            .session_lookaround(lookaround)
            .max_lookaround(Duration::from_secs(256))
            .spill_dir(spill.path())
            .part_events(400)
            .progress(false)
            .run()
    };
    let widened = run(Duration::from_secs(1), "view-widened").await.expect("run");
    // only sessions widen this spec's read: its range is the lookaround around [from, to)
    let last = Duration::from_micros(from.as_micros() - widened.read_from.as_micros()).expect("lookaround");
    assert!(last > Duration::from_secs(1), "no read was widened: {widened:?}");
    let direct = run(last, "view-direct").await.expect("run");
    assert_eq!((direct.read_from, direct.read_to), (widened.read_from, widened.read_to));
    assert!(direct.parts >= 2 && direct.spilled_bytes > 0, "not split: {direct:?}");
    // the last reads are the same; the abandoned ones (each at least a few hundred events) come on top
    assert!(
        widened.spilled_bytes > direct.spilled_bytes + direct.spilled_bytes / 4,
        "abandoned reads not counted: {} vs {}",
        widened.spilled_bytes,
        direct.spilled_bytes
    );
    assert_eq!(widened.rows_written, direct.rows_written);
    assert_eq!(std::fs::read_dir(spill.path()).expect("spill dir").count(), 0);
}

/// Parquet as Firehose lands it: the event's fields as columns, no payload column. Rows `bad[0]` and
/// `bad[1]` are made invalid (a null int: `null_field`; a NaN float: `non_finite`); `group_rows` sets the
/// row-group size.
fn write_flat_parquet(path: &std::path::Path, rows: &[RawRow], bad: [usize; 2], group_rows: Option<usize>) {
    use deltalake::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let events: Vec<serde_json::Value> =
        rows.iter().map(|r| serde_json::from_str(&r.payload).expect("valid rows only")).collect();
    let s = |k: &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(events.iter().map(|e| e[k].as_str().expect("string").to_owned())))
    };
    let mut i: Vec<Option<i64>> = events.iter().map(|e| e["i"].as_i64()).collect();
    let mut f: Vec<f64> = events.iter().map(|e| e["f"].as_f64().expect("f")).collect();
    // two bad rows: a null int (null_field) and a NaN float (non_finite)
    i[bad[0]] = None;
    f[bad[1]] = f64::NAN;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("user", DataType::Utf8, false),
        Field::new("page", DataType::Utf8, false),
        Field::new("k", DataType::Utf8, false),
        Field::new("i", DataType::Int64, true),
        Field::new("f", DataType::Float64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        s("id"),
        Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e["ts"].as_i64().expect("ts")))),
        s("user"),
        s("page"),
        s("k"),
        Arc::new(Int64Array::from(i)),
        Arc::new(Float64Array::from(f)),
    ];
    let batch = RecordBatch::try_new(schema, cols).expect("batch");
    std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
    let file = std::fs::File::create(path).expect("create");
    let props = group_rows.map(|n| {
        deltalake::parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(n)).build()
    });
    let mut w = deltalake::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), props).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_with_event_fields_as_columns_is_decoded_like_json() {
    let mut rng = Rng::new(seed("parquet_with_event_fields_as_columns_is_decoded_like_json"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rows = raw_rows(&mut rng, 1500);
    rows.retain(|r| !r.event_id.starts_with("bad"));
    write_flat_parquet(&dir.path().join("flat").join("part-0.parquet"), &rows, [0, 1], None);
    let spec = spec(&three_metrics(), &dir.path().display().to_string());
    let from = EventTime::from_micros(T0 + 10 * 60_000_000).expect("t");
    let to = EventTime::from_micros(T0 + 50 * 60_000_000).expect("t");
    let r = BatchRun::new(&spec, from, to)
        .input(InputSource::parquet(file_url(&dir.path().join("flat"))))
        .batch_view(file_url(&dir.path().join("view")))
        .session_lookaround(Duration::from_secs(120))
        .progress(false)
        .keep_rows(true)
        .run()
        .await
        .expect("run");
    check_accounting(&r);
    let reasons: Vec<(ReasonCode, u64)> = r.invalid_by_reason.clone().into_iter().collect();
    assert_eq!(reasons, vec![(ReasonCode::NullField, 1), (ReasonCode::NonFinite, 1)]);
    assert_eq!(r.dead_letters[0].at.offset, 0);
    let valid: Vec<RawRow> = rows[2..].to_vec();
    // the bad rows' ids may have later valid copies in `rows`: the reference sees what the batch saw
    let expected = expected_rows(&spec, &valid, from, to);
    assert_rows_match(&spec, &expected, &r.rows, "flat parquet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_row_groups_outside_the_range_are_not_read() {
    let mut rng = Rng::new(seed("parquet_row_groups_outside_the_range_are_not_read"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rows = raw_rows(&mut rng, 3000);
    rows.retain(|r| !r.event_id.starts_with("bad"));
    rows.sort_by_key(|r| r.event_time_us);
    // two files, the first hour and the second; row groups of 200 rows (about 8 minutes each)
    let split = rows.partition_point(|r| r.event_time_us < T0 + 60 * 60_000_000);
    let (first_hour, second_hour) = rows.split_at(split);
    let from = EventTime::from_micros(T0 + 25 * 60_000_000).expect("t");
    let to = EventTime::from_micros(T0 + 35 * 60_000_000).expect("t");
    // two bad rows inside the range, in a row group past the first: their coordinates are file rows
    let bad0 = first_hour.partition_point(|r| r.event_time_us < T0 + 30 * 60_000_000);
    assert!(bad0 > 400, "the bad rows sit past the first two row groups");
    let flat = dir.path().join("flat");
    write_flat_parquet(&flat.join("a.parquet"), first_hour, [bad0, bad0 + 1], Some(200));
    write_flat_parquet(&flat.join("b.parquet"), second_hour, [0, 1], Some(200));
    let spec = spec(&three_metrics(), &dir.path().display().to_string());
    let run = |from: EventTime, to: EventTime, view: &str| {
        BatchRun::new(&spec, from, to)
            .input(InputSource::parquet(file_url(&flat)))
            .batch_view(file_url(&dir.path().join(view)))
            .session_lookaround(Duration::from_secs(60))
            .progress(false)
            .keep_rows(true)
    };
    let plan = run(from, to, "view").dry_run(true).run().await.expect("dry run");
    assert_eq!(plan.files.len(), 1, "the second hour's file is skipped from its footer: {:?}", plan.files);
    assert!(plan.files[0].path.ends_with("a.parquet"));
    // the first file's row groups (200 rows, in time order) that overlap a read range
    let groups_over = |lo: EventTime, hi: EventTime| -> u64 {
        let overlaps =
            |g: &[RawRow]| g[g.len() - 1].event_time_us >= lo.as_micros() && g[0].event_time_us < hi.as_micros();
        first_hour.chunks(200).filter(|g| overlaps(g)).map(|g| g.len() as u64).sum()
    };
    let planned = plan.files[0].rows.expect("rows from the footer");
    assert_eq!(planned, groups_over(plan.read_from, plan.read_to));
    assert!(planned > 0 && planned < first_hour.len() as u64, "{planned} of {} rows", first_hour.len());

    let r = run(from, to, "view").run().await.expect("run");
    check_accounting(&r);
    assert_eq!(r.files.len(), 1);
    assert!(r.files[0].path.ends_with("a.parquet"));
    // sessions may widen the read range (lookaround doubled): the last read decides
    let read = groups_over(r.read_from, r.read_to);
    assert_eq!(r.rows_read, read, "only the row groups overlapping the read range are decoded");
    assert!(read < first_hour.len() as u64 || r.read_from.as_micros() <= T0, "something was pruned");
    assert!(r.read_from < from && r.read_to > to, "hopping and session windows read around the range");
    let offsets: Vec<i64> = r.dead_letters.iter().map(|d| d.at.offset).collect();
    assert_eq!(offsets, vec![bad0 as i64, bad0 as i64 + 1], "coordinates are rows of the file, not of the slice");
    let valid: Vec<RawRow> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| ![bad0, bad0 + 1, split, split + 1].contains(i))
        .map(|(_, r)| r.clone())
        .collect();
    assert_rows_match(&spec, &expected_rows(&spec, &valid, from, to), &r.rows, "pruned parquet");

    // the whole two hours: every row group of both files, the same rows as JSON Lines give
    let (all_from, all_to) =
        (EventTime::from_micros(T0).expect("t"), EventTime::from_micros(T0 + 7_200_000_000).expect("t"));
    let whole = run(all_from, all_to, "view-whole").run().await.expect("run");
    check_accounting(&whole);
    assert_eq!(whole.files.len(), 2);
    assert_eq!(whole.rows_read, rows.len() as u64);
    assert_eq!(whole.invalid, 4);
    assert_rows_match(&spec, &expected_rows(&spec, &valid, all_from, all_to), &whole.rows, "whole parquet");
}
