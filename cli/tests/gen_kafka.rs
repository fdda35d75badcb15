//! `tidemark gen --to kafka` against a real Kafka-protocol broker (tansu): every line arrives once, keyed by
//! user, each user on one partition, and the records are exactly the lines `gen --to file` writes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tidemark_stream::testing::Broker;

fn tidemark(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark")).args(args).output().expect("the binary runs");
    assert!(
        out.status.success(),
        "tidemark {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gen_to_kafka_sends_every_line_keyed_by_user() {
    let broker = Broker::start().await;
    broker.create_topic("pageviews", 4).await;
    let bootstrap = broker.bootstrap().to_owned();
    let args = ["--events", "5000", "--seed", "3", "--malformed-share", "0.002", "--duplicate-share", "0.01"];

    let summary = {
        let bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            let mut a = vec!["gen", "--to", "kafka", "--brokers", &bootstrap, "--topic", "pageviews", "--json"];
            a.extend(args);
            tidemark(&a)
        })
        .await
        .unwrap()
    };
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("--json prints JSON");
    let lines = summary["stats"]["lines"].as_u64().expect("stats.lines");
    assert!(lines > 5000, "duplicates and malformed lines come on top of the views: {lines}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let mut a = vec!["gen", "--to", "file", "--out", file.to_str().unwrap()];
    a.extend(args);
    tidemark(&a);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut expected: BTreeMap<&str, u32> = BTreeMap::new();
    for l in text.lines() {
        *expected.entry(l).or_default() += 1;
    }
    assert_eq!(text.lines().count() as u64, lines);

    let records = tokio::task::spawn_blocking(move || consume_all(&bootstrap, "pageviews", 4, lines)).await.unwrap();
    assert_eq!(records.len() as u64, lines, "every line was sent exactly once");
    let mut got: BTreeMap<String, u32> = BTreeMap::new();
    let mut partition_of_user: HashMap<String, i32> = HashMap::new();
    for (partition, key, payload) in &records {
        *got.entry(payload.clone()).or_default() += 1;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(payload)
            && let Some(user) = v.get("user").and_then(|u| u.as_str())
        {
            assert_eq!(key, user, "the key is the user");
        }
        let first = partition_of_user.entry(key.clone()).or_insert(*partition);
        assert_eq!(first, partition, "user {key} is on one partition only");
    }
    let expected: BTreeMap<String, u32> = expected.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    assert_eq!(got, expected, "Kafka holds exactly the lines of `gen --to file` with the same seed");
    let used: std::collections::BTreeSet<i32> = records.iter().map(|r| r.0).collect();
    assert_eq!(used.len(), 4, "keys spread over all partitions");
}

/// Reads `partitions` partitions of `topic` from the beginning until `expected` records arrived (or 60 s).
fn consume_all(bootstrap: &str, topic: &str, partitions: i32, expected: u64) -> Vec<(i32, String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "gen-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    while (out.len() as u64) < expected && started.elapsed() < Duration::from_secs(60) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push((
                m.partition(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            )),
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    // Nothing more than expected: wait a little for strays.
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < until {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push((m.partition(), String::new(), String::from_utf8_lossy(m.payload().unwrap_or_default()).into()));
        }
    }
    out
}
