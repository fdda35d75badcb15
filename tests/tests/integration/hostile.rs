//! Hostile names and values (issue 8): metric, dimension and aggregate names that are not identifiers are
//! rejected by the spec with the field named; hostile dimension values (SQL, quotes, control characters,
//! path traversal, the store's own `{s}` template marker, very long text) are stored verbatim by both
//! serving stores and read back unchanged — never executed, never written outside the table.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use tidemark_core::{
    AggValue, Dimensions, EventTime, MetricRow, Origin, Pane, PipelineSpec, RowChange, RowKey, Window,
};
use tidemark_store::{DeltaStoreConfig, MetricFilter, PostgresStore, ServingStore, SourceProgress, TopicPartition};

const FRAGMENTS: &[&str] = &[
    "'; DROP TABLE tidemark.serving_rows; --",
    "\" OR 1=1 --",
    "$1",
    "{s}",
    "%s%n",
    "\\",
    "'",
    "\"",
    "\0",
    "\u{1}\u{1f}\u{7f}",
    "\r\n",
    "../../../../etc/passwd",
    "..",
    "/",
    "&page=/x",
    "=",
    "%26%3D%25",
    "${HOME}",
    "$(id)",
    "`id`",
    "<script>alert(1)</script>",
    "\u{202e}evil",
    "🦀",
    "Ǆ",
    "ＡＢＣ",
    " ",
    "",
    "NULL",
    "null",
    "E'\\x00'",
    "\\x00",
    "$$ BEGIN RAISE EXCEPTION 'x'; END $$",
];

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (proptest::sample::select(FRAGMENTS), "\\PC{0,8}", proptest::sample::select(FRAGMENTS))
            .prop_map(|(a, mid, b)| format!("{a}{mid}{b}")),
        1 => "\\PC{0,40}",
        1 => proptest::collection::vec(any::<char>(), 0..30).prop_map(|cs| cs.into_iter().collect()),
        1 => (proptest::sample::select(FRAGMENTS), 1usize..400).prop_map(|(f, n)| f.repeat(n)),
    ]
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && s.len() <= 63
}

fn spec_text(metric: &str, dim: &str, aggregate: &str) -> String {
    // a TOML string literal holding the hostile text exactly, so it reaches the spec checks verbatim
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    format!(
        r#"
version = 1
name = "hostile"
[source]
type = "file"
path = "/dev/null"
[event]
id = "id"
time = {{ field = "ts", format = "rfc3339" }}
dimensions = ["page"]
[[metrics]]
name = {metric}
dimensions = [{dim}]
window = {{ type = "tumbling", size = "1m" }}
aggregates = [{{ name = {aggregate}, fn = "count" }}]
[stores]
raw_archive = "/tmp/hostile/raw"
serving = "/tmp/hostile/serving"
dead_letter = "/tmp/hostile/dead"
batch_view = "/tmp/hostile/batch"
"#,
        metric = q(metric),
        dim = q(dim),
        aggregate = q(aggregate),
    )
}

/// The long tier (`TIDEMARK_LONG=1`, scripts/soak.sh): 20x the spec cases and 10x the stored values.
fn long_tier() -> bool {
    std::env::var("TIDEMARK_LONG").is_ok_and(|v| v == "1")
}

#[test]
fn hostile_names_in_a_spec_are_rejected_with_the_field_named() {
    let cases = if long_tier() { 20_000 } else { 1_000 };
    eprintln!("cases {cases}");
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let rejected = std::cell::Cell::new(0u32);
    runner
        .run(&(hostile(), hostile(), hostile(), 0usize..3), |(name, dim, agg, which)| {
            // one hostile name per spec, the others valid, so the error must point at that one
            let (metric, dim, aggregate, field) = match which {
                0 => (name.as_str(), "page", "n", "metrics[0].name"),
                1 => ("views", dim.as_str(), "n", "metrics[0].dimensions"),
                _ => ("views", "page", agg.as_str(), "metrics[0].aggregates[0].name"),
            };
            let hostile_name = [metric, dim, aggregate][which];
            match PipelineSpec::parse(&spec_text(metric, dim, aggregate), "hostile.toml", None) {
                Ok(spec) => {
                    // accepted only if it really is an identifier (or a declared dimension)
                    prop_assert!(
                        is_identifier(hostile_name) && (which != 1 || hostile_name == "page"),
                        "accepted {hostile_name:?}"
                    );
                    prop_assert_eq!(spec.metric(metric).map(|m| m.name.as_str()), Some(metric));
                }
                Err(errors) => {
                    rejected.set(rejected.get() + 1);
                    let text = errors.to_string();
                    prop_assert!(text.contains("hostile.toml") && text.contains(field), "{field} not named in: {text}");
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(rejected.get() > 900, "only {} of 1000 hostile names were rejected", rejected.get());
}

fn key(metric: &str, minute: i64, page: &str) -> RowKey {
    let t = |s: i64| EventTime::from_secs(s).unwrap();
    RowKey {
        metric: metric.to_owned(),
        window: Window::new(t(minute * 60), t(minute * 60 + 60)).unwrap(),
        dims: Dimensions::new([("page".to_owned(), page.to_owned())]),
    }
}

fn row(key: RowKey, n: i64) -> MetricRow {
    MetricRow {
        key,
        values: BTreeMap::from([("n".to_owned(), AggValue::Int(n))]),
        events: n as u64,
        origin: Origin::Speed { revision: 0, pane: Pane::OnTime, watermark: EventTime::from_secs(1).unwrap() },
        computed_at: EventTime::from_secs(2).unwrap(),
    }
}

/// Writes `values` (as dimension values, 100 per write) through `store` and reads them back verbatim.
async fn round_trip(store: &dyn ServingStore, values: &[String]) {
    store.init().await.unwrap();
    let epoch = store.claim_writer("hostile").await.unwrap().writer_epoch;
    let mut expected = Vec::new();
    for (seq, chunk) in values.chunks(100).enumerate() {
        // distinct keys: values may repeat, minutes do not
        let rows: Vec<MetricRow> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| row(key("views", (seq * 100 + i) as i64, v), (seq * 100 + i + 1) as i64))
            .collect();
        let progress = SourceProgress {
            pipeline: "hostile".into(),
            writer_epoch: epoch,
            sequence: seq as u64 + 1,
            offsets: BTreeMap::from([(TopicPartition::new("events", 0), seq as i64)]),
            checkpoint: Some(chunk.concat().into_bytes()),
        };
        let changes: Vec<RowChange> = rows.iter().cloned().map(RowChange::Upsert).collect();
        store.write_provisional(&changes, &progress).await.unwrap_or_else(|e| panic!("{e}: {chunk:?}"));
        assert_eq!(store.load_progress("hostile").await.unwrap(), Some(progress));
        expected.extend(rows);
    }
    let got = store.read_range(&MetricFilter::All, EventTime::UNIX_EPOCH, EventTime::MAX).await.unwrap();
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.key, e.key, "dimension value changed on the way");
        assert_eq!(g.values, e.values);
    }
}

fn hostile_values(n: usize, seed: u64) -> Vec<String> {
    let mut runner = TestRunner::new_with_rng(
        Config { failure_persistence: None, ..Config::default() },
        proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &{
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&seed.to_le_bytes());
            s
        }),
    );
    let mut out: Vec<String> = FRAGMENTS.iter().map(|s| s.to_string()).collect();
    while out.len() < n {
        out.push(hostile().new_tree(&mut runner).unwrap().current());
    }
    out
}

const SEED: u64 = 0x71de_0008;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_dimension_values_round_trip_through_postgres() {
    eprintln!("seed {SEED:#x}");
    let db = tidemark_store::testing::postgres().await.unwrap();
    let store = PostgresStore::connect(&db.conninfo, "tidemark").await.unwrap();
    round_trip(&store, &hostile_values(values(), SEED)).await;
}

fn values() -> usize {
    let n = if long_tier() { 10_000 } else { 1_000 };
    eprintln!("values {n}");
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_dimension_values_round_trip_through_delta_and_stay_inside_the_table() {
    eprintln!("seed {SEED:#x}");
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("serving");
    let store = DeltaStoreConfig::new(format!("file://{}", table.display())).build().await.unwrap();
    round_trip(&store, &hostile_values(values(), SEED)).await;
    // nothing was written beside the table
    let entries: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(entries, vec!["serving".to_owned()]);
}
