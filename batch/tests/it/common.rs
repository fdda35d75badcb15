//! Shared helpers: a seeded generator, spec text, row comparison.

use tidemark_core::{AggValue, MetricRow, PipelineSpec, Tolerance, ValidSpec};

/// splitmix64: a small, seedable generator (the seed is printed so failures reproduce).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (hi > lo).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo) as u64) as i64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.range(0, xs.len() as i64) as usize]
    }
}

/// The seed: `TIDEMARK_SEED` if set, else the clock. Printed either way.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("TIDEMARK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    println!("{test}: seed {seed} (rerun with TIDEMARK_SEED={seed})");
    seed
}

/// A spec with dims `user`, `page`, `k`, values `i` (int) and `f` (float), the given metrics TOML, and
/// stores under `dir`.
pub fn spec(metrics: &str, dir: &str) -> ValidSpec {
    let text = format!(
        r#"
version = 1
name = "t"
[source]
type = "file"
path = "events.jsonl"
[event]
id = "id"
time = {{ field = "ts", format = "epoch_us" }}
dimensions = ["user", "page", "k"]
values = {{ i = "int", f = "float" }}
[time]
max_future_skew = "5m"
{metrics}
[stores]
raw_archive = "{dir}/raw"
serving = "{dir}/serving"
dead_letter = "{dir}/dead"
batch_view = "{dir}/view"
"#
    );
    PipelineSpec::parse(&text, "test.toml", Some(std::path::Path::new(dir))).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Every aggregate over every kind of input.
pub const ALL_AGGREGATES: &str = r#"aggregates = [
  { name = "n", fn = "count" },
  { name = "sum_i", fn = "sum", field = "i" },
  { name = "sum_f", fn = "sum", field = "f" },
  { name = "min_i", fn = "min", field = "i" },
  { name = "min_f", fn = "min", field = "f" },
  { name = "max_i", fn = "max", field = "i" },
  { name = "max_f", fn = "max", field = "f" },
  { name = "mean_i", fn = "mean", field = "i" },
  { name = "mean_f", fn = "mean", field = "f" },
  { name = "users", fn = "count_distinct", field = "user" },
  { name = "distinct_i", fn = "count_distinct", field = "i" },
  { name = "distinct_f", fn = "count_distinct", field = "f" },
]"#;

/// Every aggregate that merges from partial results (all but `count_distinct`): hopping windows of such a
/// metric are computed from panes.
pub const MERGEABLE_AGGREGATES: &str = r#"aggregates = [
  { name = "n", fn = "count" },
  { name = "sum_i", fn = "sum", field = "i" },
  { name = "sum_f", fn = "sum", field = "f" },
  { name = "min_i", fn = "min", field = "i" },
  { name = "min_f", fn = "min", field = "f" },
  { name = "max_i", fn = "max", field = "i" },
  { name = "max_f", fn = "max", field = "f" },
  { name = "mean_i", fn = "mean", field = "i" },
  { name = "mean_f", fn = "mean", field = "f" },
]"#;

/// Asserts two row sets are equal: same keys and event counts, values equal within each aggregate's
/// tolerance (exact unless the spec says otherwise).
pub fn assert_rows_match(spec: &ValidSpec, expected: &[MetricRow], got: &[MetricRow], context: &str) {
    let keys = |rows: &[MetricRow]| rows.iter().map(|r| r.key.clone()).collect::<Vec<_>>();
    let (ek, gk) = (keys(expected), keys(got));
    if ek != gk {
        let first = ek.iter().zip(&gk).position(|(a, b)| a != b).unwrap_or(ek.len().min(gk.len()));
        panic!(
            "{context}: row keys differ ({} expected, {} got); first difference at {first}: expected {:?}, got {:?}",
            ek.len(),
            gk.len(),
            ek.get(first),
            gk.get(first)
        );
    }
    for (e, g) in expected.iter().zip(got) {
        assert_eq!(e.events, g.events, "{context}: events of {:?}", e.key);
        let metric = spec.metric(&e.key.metric).expect("metric of the spec");
        assert_eq!(e.values.len(), g.values.len(), "{context}: aggregates of {:?}", e.key);
        for a in &metric.aggregates {
            let (x, y) = (e.values[&a.name], g.values[&a.name]);
            let same_kind = matches!(
                (x, y),
                (AggValue::Int(_), AggValue::Int(_))
                    | (AggValue::Float(_), AggValue::Float(_))
                    | (AggValue::Null, AggValue::Null)
            );
            assert!(same_kind, "{context}: {} of {:?}: {x:?} vs {y:?} (kind)", a.name, e.key);
            assert!(
                a.tolerance.within(x, y),
                "{context}: {} of {:?}: expected {x:?}, got {y:?} ({})",
                a.name,
                e.key,
                a.tolerance
            );
            if matches!(a.tolerance, Tolerance::Exact) {
                assert_eq!(x, y, "{context}: {} of {:?}", a.name, e.key);
            }
        }
    }
}

/// One raw row as the stream service would archive it.
#[derive(Debug, Clone)]
pub struct RawRow {
    pub payload: String,
    pub event_id: String,
    pub event_time_us: i64,
    pub ingest_us: i64,
    pub partition: i32,
    pub offset: i64,
}

/// 2026-11-23T06:00:00Z: comfortably in the past of any test machine's clock used here.
pub const T0: i64 = 1_795_413_600_000_000;

/// Raw rows over two hours from `T0`: `n` events of 25 users, ~10% exact duplicates (re-delivered at
/// another offset), and a few undecodable rows of every clock-independent kind.
pub fn raw_rows(rng: &mut Rng, n: usize) -> Vec<RawRow> {
    let mut rows: Vec<RawRow> = Vec::new();
    let mut offset = 0i64;
    let invalid = [
        ("not json at all", "not_json"),
        (r#"{"id":"x1","ts":1795413600000000,"user":"u","page":"/","k":"a","i":1}"#, "missing_field"),
        (r#"{"id":"x2","ts":1795413600000000,"user":"u","page":"/","k":"a","i":"7","f":1.0}"#, "wrong_type"),
        (r#"{"id":"x3","ts":"yesterday","user":"u","page":"/","k":"a","i":1,"f":1.0}"#, "wrong_type"),
        ("", "empty"),
        (r#"[1,2,3]"#, "not_object"),
    ];
    for j in 0..n {
        let partition = rng.range(0, 3) as i32;
        if rng.chance(0.01) {
            let (p, _) = *rng.pick(&invalid);
            rows.push(RawRow {
                payload: p.to_owned(),
                event_id: format!("bad{j}"),
                event_time_us: T0,
                ingest_us: T0 + rng.range(0, 7_200_000_000),
                partition,
                offset,
            });
            offset += 1;
            continue;
        }
        if !rows.is_empty() && rng.chance(0.1) {
            let mut dup = rng.pick(&rows).clone();
            dup.ingest_us += rng.range(1, 60_000_000);
            dup.offset = offset;
            offset += 1;
            rows.push(dup);
            continue;
        }
        let t = T0 + rng.range(0, 7_200_000_000);
        let id = format!("ev-{j}");
        let f = if rng.chance(0.1) { 0.0 } else { (rng.unit() * 1e6).round() / 8.0 };
        let payload = serde_json::json!({
            "id": id,
            "ts": t,
            "user": format!("u{}", rng.range(0, 25)),
            "page": rng.pick(&["/", "/a&b", "/x=y"]),
            "k": rng.pick(&["a", "b"]),
            "i": rng.range(-500, 5000),
            "f": f,
        })
        .to_string();
        rows.push(RawRow {
            payload,
            event_id: id,
            event_time_us: t,
            ingest_us: t + rng.range(0, 20_000_000),
            partition,
            offset,
        });
        offset += 1;
    }
    rows
}

pub fn file_url(path: &std::path::Path) -> String {
    format!("file://{}", path.display())
}

fn archive_batch(rows: &[RawRow]) -> deltalake::arrow::array::RecordBatch {
    use deltalake::arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_time", ts.clone(), false),
        Field::new("ingest_time", ts, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("payload", DataType::Utf8, false),
        Field::new("ingest_date", DataType::Utf8, false),
    ]));
    let tsa = |v: Vec<i64>| -> ArrayRef { Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) };
    let date = |us: i64| chrono::DateTime::from_timestamp_micros(us).expect("t").format("%Y-%m-%d").to_string();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.event_id.as_str()))),
        tsa(rows.iter().map(|r| r.event_time_us).collect()),
        tsa(rows.iter().map(|r| r.ingest_us).collect()),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "pageviews"))),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.partition))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.payload.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| date(r.ingest_us)))),
    ];
    deltalake::arrow::array::RecordBatch::try_new(schema, cols).expect("batch")
}

/// Appends the rows to the raw archive Delta table at `dir`, in `commits` commits.
pub async fn write_archive(dir: &std::path::Path, rows: &[RawRow], commits: usize) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let url = url::Url::from_directory_path(dir).expect("url");
    let per = rows.len().div_ceil(commits.max(1)).max(1);
    for chunk in rows.chunks(per) {
        let table = deltalake::DeltaTable::try_from_url(url.clone()).await.expect("table");
        table
            .write(vec![archive_batch(chunk)])
            .with_save_mode(deltalake::protocol::SaveMode::Append)
            .with_partition_columns(["ingest_date"])
            .await
            .expect("append");
    }
}

/// Writes the rows as Parquet files (archive columns, no partition column) under `dir`.
pub fn write_parquet(dir: &std::path::Path, rows: &[RawRow], files: usize) {
    std::fs::create_dir_all(dir.join("nested")).expect("mkdir");
    let per = rows.len().div_ceil(files.max(1)).max(1);
    for (i, chunk) in rows.chunks(per).enumerate() {
        let batch = archive_batch(chunk);
        let batch = batch.project(&[0, 1, 2, 3, 4, 5, 6]).expect("project");
        let sub = if i % 2 == 0 { dir.to_path_buf() } else { dir.join("nested") };
        let f = std::fs::File::create(sub.join(format!("part-{i}.parquet"))).expect("create");
        let mut w = deltalake::parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
    }
}

/// Writes the payloads as JSON Lines files under `dir`.
pub fn write_jsonl(dir: &std::path::Path, rows: &[RawRow], files: usize) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let per = rows.len().div_ceil(files.max(1)).max(1);
    for (i, chunk) in rows.chunks(per).enumerate() {
        let mut text = String::new();
        for r in chunk {
            text.push_str(&r.payload);
            text.push('\n');
        }
        std::fs::write(dir.join(format!("events-{i}.jsonl")), text).expect("write");
    }
}
