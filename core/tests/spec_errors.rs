//! Invalid specs are rejected, and every message names the file and the field (issue: foundation).

use tidemark_core::PipelineSpec;

const BASE: &str = r#"
version = 1
name = "shop"

[source]
type = "kafka"
brokers = "localhost:9092"
topic = "orders"
group = "tidemark"

[event]
id = "order_id"
time = { field = "ts", format = "epoch_ms" }
dimensions = ["country", "channel"]
values = { amount = "float", items = "int" }

[time]
watermark_delay = "5s"
allowed_lateness = "1m"

[[metrics]]
name = "revenue"
dimensions = ["country"]
window = { type = "tumbling", size = "1m" }
aggregates = [
  { name = "orders", fn = "count" },
  { name = "revenue", fn = "sum", field = "amount" },
  { name = "items", fn = "max", field = "items" },
]

[[metrics]]
name = "trend"
window = { type = "hopping", size = "10m", slide = "1m" }
aggregates = [{ name = "buyers", fn = "count_distinct", field = "channel" }]

[stores]
raw_archive = "file:///data/raw"
serving = "postgres://tidemark:hunter2@db/tidemark"
dead_letter = "file:///data/dlq"
batch_view = "s3://bucket/batch"
"#;

fn errors_of(text: &str) -> Vec<String> {
    match PipelineSpec::parse(text, "shop.toml", None) {
        Ok(_) => panic!("accepted an invalid spec:\n{text}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// Replaces `from` (which must occur in BASE) by `to`.
fn patched(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    BASE.replacen(from, to, 1)
}

#[test]
fn the_base_spec_is_valid_and_redacts_secrets() {
    let spec = PipelineSpec::parse(BASE, "shop.toml", None).unwrap_or_else(|e| panic!("{e}"));
    let printed = spec.to_toml();
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("postgres://tidemark:<redacted>@db/tidemark"), "{printed}");
    // defaults are filled in
    assert!(printed.contains(r#"late_policy = "update""#), "{printed}");
    assert!(printed.contains(r#"tolerance = "exact""#), "{printed}");
    assert!(printed.contains(r#"tolerance = "rel(1e-9)""#), "{printed}");
    assert_eq!(spec.metrics()[1].window.kind_name(), "hopping");
}

/// (what, spec text, the field path the message must name, a phrase it must contain)
fn cases() -> Vec<(&'static str, String, &'static str, &'static str)> {
    vec![
        ("version", patched("version = 1", "version = 2"), "version", "unsupported version 2"),
        (
            "unknown field",
            patched(r#"size = "1m" }"#, r#"size = "1m", sizee = "2m" }"#),
            "metrics[0].window",
            "unknown field `sizee`",
        ),
        ("unknown top-level table", format!("{BASE}\n[extras]\nx = 1\n"), "", "unknown field `extras`"),
        (
            "bad duration",
            patched(r#"watermark_delay = "5s""#, r#"watermark_delay = "5 sec ago""#),
            "time.watermark_delay",
            "not a duration",
        ),
        (
            "duration of wrong type",
            patched(r#"allowed_lateness = "1m""#, "allowed_lateness = 60"),
            "time.allowed_lateness",
            "expected a string",
        ),
        (
            "unknown time format",
            patched(r#"format = "epoch_ms""#, r#"format = "epoch_ns""#),
            "event.time.format",
            "unknown variant `epoch_ns`",
        ),
        (
            "unknown late policy",
            patched(r#"allowed_lateness = "1m""#, "allowed_lateness = \"1m\"\nlate_policy = \"drop\""),
            "time.late_policy",
            "unknown variant `drop`",
        ),
        (
            "unknown aggregate fn",
            patched(r#"fn = "max""#, r#"fn = "median""#),
            "metrics[0].aggregates[2].fn",
            "unknown variant `median`",
        ),
        (
            "hopping not a multiple",
            patched(r#"size = "10m", slide = "1m""#, r#"size = "10m", slide = "3m""#),
            "metrics[1].window.size",
            "multiple of slide",
        ),
        (
            "slide larger than size",
            patched(r#"size = "10m", slide = "1m""#, r#"size = "1m", slide = "10m""#),
            "metrics[1].window.size",
            "must not exceed size",
        ),
        ("zero window", patched(r#"size = "1m" }"#, r#"size = "0s" }"#), "metrics[0].window.size", "greater than 0s"),
        (
            "session gap zero",
            patched(r#"{ type = "hopping", size = "10m", slide = "1m" }"#, r#"{ type = "session", gap = "0s" }"#),
            "metrics[1].window.gap",
            "greater than 0s",
        ),
        (
            "offset too large",
            patched(r#"size = "1m" }"#, r#"size = "1m", offset = "1m" }"#),
            "metrics[0].window.offset",
            "less than size",
        ),
        (
            "unknown metric dimension",
            patched(r#"dimensions = ["country"]"#, r#"dimensions = ["region"]"#),
            "metrics[0].dimensions[0]",
            "not one of event.dimensions",
        ),
        (
            "sum over a dimension",
            patched(r#"fn = "sum", field = "amount""#, r#"fn = "sum", field = "country""#),
            "metrics[0].aggregates[1].field",
            "numeric field",
        ),
        (
            "count with a field",
            patched(r#"{ name = "orders", fn = "count" }"#, r#"{ name = "orders", fn = "count", field = "amount" }"#),
            "metrics[0].aggregates[0].field",
            "count takes no field",
        ),
        (
            "mean without field",
            patched(r#"fn = "max", field = "items""#, r#"fn = "mean""#),
            "metrics[0].aggregates[2].field",
            "needs a field",
        ),
        ("duplicate metric", patched(r#"name = "trend""#, r#"name = "revenue""#), "metrics[1].name", "defined twice"),
        (
            "duplicate aggregate",
            patched(r#"name = "items""#, r#"name = "orders""#),
            "metrics[0].aggregates[2].name",
            "defined twice",
        ),
        (
            "injection in a metric name",
            patched(r#"name = "trend""#, r#"name = "x\"; DROP TABLE rows; --""#),
            "metrics[1].name",
            "lowercase identifier",
        ),
        (
            "field used twice",
            patched(r#"dimensions = ["country", "channel"]"#, r#"dimensions = ["country", "ts"]"#),
            "event.dimensions[1]",
            "already used by event.time.field",
        ),
        (
            "bad tolerance",
            patched(r#"field = "amount" }"#, r#"field = "amount", tolerance = "about(1)" }"#),
            "metrics[0].aggregates[1].tolerance",
            "not a tolerance",
        ),
        (
            "unsupported store scheme",
            patched(r#""s3://bucket/batch""#, r#""ftp://host/batch""#),
            "stores.batch_view",
            "unsupported scheme",
        ),
        (
            "postgres outside serving",
            patched(r#""file:///data/raw""#, r#""postgres://db/raw""#),
            "stores.raw_archive",
            "only the serving store",
        ),
        (
            "relative path without a folder",
            patched(r#""file:///data/dlq""#, r#""dlq""#),
            "stores.dead_letter",
            "relative path",
        ),
        (
            "accuracy out of range",
            format!("{BASE}\n[contract]\naccuracy_target = 1.5\n"),
            "contract.accuracy_target",
            "must be in (0, 1]",
        ),
        (
            "no metrics",
            {
                let without = format!(
                    "{}{}",
                    &BASE[..BASE.find("[[metrics]]").unwrap()],
                    &BASE[BASE.find("[stores]").unwrap()..]
                );
                without.replacen("name = \"shop\"", "name = \"shop\"\nmetrics = []", 1)
            },
            "metrics",
            "at least one",
        ),
        (
            "kafka option tidemark owns",
            patched(r#"group = "tidemark""#, "group = \"tidemark\"\noptions = { \"group.id\" = \"other\" }"),
            "source.options.\"group.id\"",
            "set by tidemark",
        ),
        ("missing source field", patched(r#"topic = "orders""#, ""), "source", "missing field `topic`"),
        ("not TOML", "version = = 1".to_owned(), "", "expected"),
    ]
}

#[test]
fn invalid_specs_name_the_file_and_the_field() {
    let cases = cases();
    assert!(cases.len() >= 12);
    for (what, text, path, phrase) in cases {
        let errors = errors_of(&text);
        let found = errors.iter().any(|e| {
            e.starts_with("shop.toml") && (path.is_empty() || e.contains(&format!(": {path}: "))) && e.contains(phrase)
        });
        assert!(found, "{what}: expected an error at {path:?} containing {phrase:?}, got {errors:#?}");
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let text = patched(r#"name = "trend""#, r#"name = "Trend""#)
        .replacen(r#"size = "1m" }"#, r#"size = "0s" }"#, 1)
        .replacen(r#""s3://bucket/batch""#, r#""gopher://x""#, 1);
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn serde_errors_carry_line_and_column() {
    let text = patched(r#"watermark_delay = "5s""#, r#"watermark_delay = "soon""#);
    let errors = errors_of(&text);
    let line = text.lines().position(|l| l.contains("soon")).unwrap() + 1;
    assert!(errors[0].starts_with(&format!("shop.toml:{line}:")), "{errors:?}");
}

/// Issue 19: a file source may name the field holding each line's arrival time; it must be a field name.
#[test]
fn issue_19_a_file_source_names_its_arrival_field() {
    let file = |received_at: &str| {
        patched(
            "type = \"kafka\"\nbrokers = \"localhost:9092\"\ntopic = \"orders\"\ngroup = \"tidemark\"",
            &format!("type = \"file\"\npath = \"/data/orders.jsonl\"\nreceived_at = \"{received_at}\""),
        )
    };
    let spec = PipelineSpec::parse(&file("received_at"), "shop.toml", None).unwrap();
    assert!(matches!(
        &spec.spec().source,
        tidemark_core::spec::SourceSpec::File { received_at: Some(f), .. } if f == "received_at"
    ));
    let errors = errors_of(&file("has space"));
    assert!(errors.iter().any(|e| e.contains("shop.toml") && e.contains("source.received_at")), "{errors:?}");
}

#[test]
fn issue_24_a_kafka_source_names_its_arrival_and_the_suspect_settings_are_checked() {
    use tidemark_core::spec::{KafkaArrival, SourceSpec};
    let kafka = |arrival: &str| {
        patched(
            "type = \"kafka\"\nbrokers = \"localhost:9092\"\ntopic = \"orders\"\ngroup = \"tidemark\"",
            &format!(
                "type = \"kafka\"\nbrokers = \"localhost:9092\"\ntopic = \"orders\"\ngroup = \"tidemark\"\n{arrival}"
            ),
        )
    };
    let arrival_of = |text: &str| match &PipelineSpec::parse(text, "shop.toml", None).unwrap().spec().source {
        SourceSpec::Kafka { arrival, .. } => arrival.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(arrival_of(&kafka("")), KafkaArrival::Timestamp, "the default");
    assert_eq!(arrival_of(&kafka("arrival = \"log_append_time\"")), KafkaArrival::LogAppendTime);
    let field = kafka("arrival = { field = \"received_at\" }");
    assert_eq!(arrival_of(&field), KafkaArrival::Field("received_at".into()));
    // printed and parsed again: the same
    let printed = PipelineSpec::parse(&field, "shop.toml", None).unwrap().to_toml();
    assert_eq!(arrival_of(&printed), KafkaArrival::Field("received_at".into()), "{printed}");
    let errors = errors_of(&kafka("arrival = { field = \"has space\" }"));
    assert!(errors.iter().any(|e| e.contains("source.arrival.field")), "{errors:?}");
    // an unknown kind: the file, the [source] table and the kinds there are (serde's tagged `source` enum
    // does not say which key of it held the value)
    let errors = errors_of(&kafka("arrival = \"wall_clock\""));
    assert!(
        errors.iter().any(|e| e.contains("shop.toml") && e.contains("wall_clock") && e.contains("log_append_time")),
        "{errors:?}"
    );

    let timed = |time: &str| patched("[time]", &format!("[time]\n{time}"));
    let errors = errors_of(&timed("suspect_confirmations = 0\nsuspect_expiry = 0\nsuspect_lead = \"0s\""));
    for field in ["time.suspect_confirmations", "time.suspect_expiry", "time.suspect_lead"] {
        assert!(errors.iter().any(|e| e.contains(field)), "{field}: {errors:?}");
    }
}
