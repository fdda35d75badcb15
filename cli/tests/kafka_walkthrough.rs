//! Issue 24: the README's Kafka walkthrough as a test, on a real Kafka-protocol broker (tansu) with a
//! 4-partition topic. `tidemark gen --to kafka` fills one topic as a backlog and sends the same lines to
//! another with `--live` (real time) while `tidemark stream` runs; each run is then batched and reconciled.
//! - The arrival clock is the record timestamp (gen stamps each record with its simulated arrival), so the
//!   generated events from the future are dead-lettered as `future_event` in both runs, and the backlog is
//!   processed as the live run: the same dead letters, late events within a hair of each other.
//! - Late-routed events stay within 1.5x the generated late events; reconcile explains every difference.
//! - A third run adds events a producer with a clock 2 minutes ahead sent on every partition (less than
//!   `max_future_skew`, so they are aggregated): they are suspects that move no watermark, and every other
//!   event's fate is the one it had in the clean backlog run.

mod common;
mod stream_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tidemark_core::EventTime;
use tidemark_store::DeadLetterStore;
use tidemark_stream::testing::Broker;

const PARTITIONS: i32 = 4;
/// 2 minutes of event time at 100 views/s, 1% late by 20-40 s, 0.5% malformed (some from the future).
const GEN: [&str; 14] = [
    "--events",
    "12000",
    "--seed",
    "3",
    "--rate",
    "100",
    "--late-min",
    "20s",
    "--late-max",
    "40s",
    "--malformed-share",
    "0.005",
    "--duplicate-share",
    "0.002",
];

fn tidemark(args: &[&str]) -> String {
    let (code, out, err) = common::tidemark(args);
    assert_eq!(code, 0, "tidemark {args:?}: {out}\n{err}");
    out
}

/// examples/pageviews.toml on `topic` with its stores in `dir`, allowed lateness 15 s.
fn write_spec(dir: &Path, bootstrap: &str, topic: &str) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pageviews.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let store = |s: &str| format!("\"file://{}\"", dir.join(s).display());
    let mut replaced = 0;
    let mut spec = String::new();
    for line in text.lines() {
        let line = match line.split_once('=').map(|(k, _)| k.trim()) {
            Some("brokers") => format!("brokers = \"{bootstrap}\""),
            Some("topic") => format!("topic = \"{topic}\""),
            Some("group") => format!("group = \"tidemark-{topic}\""),
            Some("allowed_lateness") => "allowed_lateness = \"15s\"".to_owned(),
            Some(k @ ("raw_archive" | "serving" | "dead_letter" | "batch_view")) => format!("{k} = {}", store(k)),
            _ => {
                spec.push_str(line);
                spec.push('\n');
                continue;
            }
        };
        replaced += 1;
        spec.push_str(&line);
        spec.push('\n');
    }
    assert_eq!(replaced, 8, "the example still has the lines this test points elsewhere:\n{spec}");
    let path = dir.join("spec.toml");
    std::fs::write(&path, spec).unwrap();
    path
}

fn spawn_stream(spec: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["stream", "--spec", spec.to_str().unwrap(), "--listen", "off", "--flush-interval", "200ms"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// What one run of the walkthrough showed.
#[derive(Debug)]
struct Run {
    consumed: u64,
    aggregated: u64,
    late: u64,
    dead_lettered: u64,
    duplicates: u64,
    /// Far-ahead events held back from the watermark.
    suspects: u64,
    /// Dead letters: coordinates → reason.
    dead: BTreeMap<String, String>,
    /// A few late-ledger records, for failure messages.
    late_sample: Vec<String>,
    /// Late-ledger records: distinct coordinates.
    late_coords: std::collections::BTreeSet<String>,
    reconcile: serde_json::Value,
}

/// Waits for the stream to commit everything on the topic, then for the partitions to go idle (so the
/// last windows fire), stops it, and batches + reconciles the hour.
async fn finish(mut child: Child, dir: &Path, spec: &Path, log: &Path, records: u64) -> Run {
    // Offsets start at 0 on a fresh topic: the committed offsets add up to the records on the topic.
    let committed = || async {
        let c = stream_common::committed(dir, "pageviews").await.unwrap_or_default();
        (c.len(), c.values().map(|o| u64::try_from(*o).unwrap()).sum::<u64>())
    };
    let started = Instant::now();
    while committed().await != (PARTITIONS as usize, records) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("stream exited with {status}: {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        if started.elapsed() > Duration::from_secs(300) {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail = &text[text.len().saturating_sub(4000)..];
            let got = stream_common::committed(dir, "pageviews").await;
            panic!("stream did not commit {records} records: committed {got:?}; log ends:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // idle_timeout (30 s) of processing time after the last arrival: every partition idle, windows fire
    tokio::time::sleep(Duration::from_secs(33)).await;
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    std::fs::write(format!("/tmp/kw-{}.log", dir.file_name().unwrap().to_str().unwrap()), &text).unwrap();
    let summary = text
        .lines()
        .find(|l| l.contains("since the pipeline began: consumed "))
        .unwrap_or_else(|| panic!("no summary: {text}"));
    let numbers: Vec<u64> = summary
        .split("consumed ")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let [consumed, aggregated, late, dead_lettered, duplicates, suspects] = numbers[..] else { panic!("{summary}") };
    assert_eq!(consumed, aggregated + late + dead_lettered + duplicates, "{summary}");

    let dl = DeadLetterStore::open(&format!("file://{}", dir.join("dead_letter").display())).unwrap();
    // coordinates without the topic name (`[partition]@offset`), so runs on two topics compare
    let at = |c: &tidemark_core::SourceCoordinates| format!("[{}]@{}", c.partition, c.offset);
    let dead = dl.list().await.unwrap().into_iter().map(|d| (at(&d.coordinates), d.reason.to_string())).collect();
    let ledger = dl.list_late().await.unwrap();
    let late_sample: Vec<String> =
        ledger.iter().take(3).map(|l| format!("{} {} {}", l.coordinates, l.event_time, l.body)).collect();
    let late_coords = ledger.into_iter().map(|l| at(&l.coordinates)).collect();

    let spec_s = spec.to_str().unwrap().to_owned();
    let reconcile = tokio::task::spawn_blocking(move || {
        let (from, to) = ("2026-01-01T00:00:00Z", "2026-01-01T02:00:00Z"); // the data and the future events
        tidemark(&["batch", "--spec", &spec_s, "--from", from, "--to", to]);
        let out = tidemark(&["reconcile", "--spec", &spec_s, "--from", from, "--to", to, "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    })
    .await
    .unwrap();
    Run { consumed, aggregated, late, dead_lettered, duplicates, suspects, dead, late_coords, late_sample, reconcile }
}

/// `gen` with the shared arguments plus `extra`; returns its JSON summary.
async fn generate(extra: Vec<String>) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        let mut args: Vec<&str> = vec!["gen", "--json", "--start", "2026-01-01T00:00:00Z"];
        args.extend(GEN);
        args.extend(extra.iter().map(String::as_str));
        serde_json::from_str(&tidemark(&args)).unwrap()
    })
    .await
    .unwrap()
}

fn kafka_args(bootstrap: &str, topic: &str) -> Vec<String> {
    ["--to", "kafka", "--brokers", bootstrap, "--topic", topic].map(str::to_owned).to_vec()
}

/// The generated lines whose time is ahead of their arrival by more than `max_future_skew` (5 m).
fn future_lines(dir: &Path) -> usize {
    let file = dir.join("lines.jsonl");
    let mut args = vec!["gen", "--start", "2026-01-01T00:00:00Z", "--to", "file", "--out", file.to_str().unwrap()];
    args.extend(GEN);
    tidemark(&args);
    std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            let t = |f: &str| v.get(f).and_then(|x| x.as_str()).and_then(EventTime::parse_rfc3339);
            matches!((t("ts"), t("received_at")), (Some(ts), Some(r)) if ts.as_micros() - r.as_micros() > 300_000_000)
        })
        .count()
}

fn causes(run: &Run) -> &serde_json::Map<String, serde_json::Value> {
    run.reconcile["causes"].as_object().unwrap_or_else(|| panic!("{}", run.reconcile))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_24_readme_kafka_walkthrough_backlog_and_live() {
    let broker = Broker::start().await;
    let bootstrap = broker.bootstrap().to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let future = future_lines(tmp.path());
    assert!(future >= 4, "the generated stream has events from the future: {future}");

    // 1. Backlog: everything is on the topic before the service starts.
    let dir = tmp.path().join("backlog");
    std::fs::create_dir_all(&dir).unwrap();
    broker.create_topic("backlog", PARTITIONS).await;
    let stats = generate(kafka_args(&bootstrap, "backlog")).await;
    let generated_late = stats["stats"]["late"].as_u64().unwrap();
    let malformed = stats["stats"]["malformed"].as_u64().unwrap();
    assert!(generated_late >= 100, "{stats}");
    let spec = write_spec(&dir, &bootstrap, "backlog");
    let log = dir.join("stream.log");
    let lines = stats["stats"]["lines"].as_u64().unwrap();
    let backlog = finish(spawn_stream(&spec, &log), &dir, &spec, &log, lines).await;

    // 2. Live: the service runs first; gen sends each line at its arrival time.
    let dir = tmp.path().join("live");
    std::fs::create_dir_all(&dir).unwrap();
    broker.create_topic("live", PARTITIONS).await;
    let spec = write_spec(&dir, &bootstrap, "live");
    let log = dir.join("stream.log");
    let child = spawn_stream(&spec, &log);
    let mut live_args = kafka_args(&bootstrap, "live");
    live_args.push("--live".into());
    generate(live_args).await;
    let live = finish(child, &dir, &spec, &log, lines).await;

    for (name, run) in [("backlog", &backlog), ("live", &live)] {
        println!("{name}: {run:?}");
        assert_eq!(run.consumed, lines, "{name}");
        assert_eq!(run.dead_lettered, malformed, "{name}: every malformed line, nothing else");
        let future_dead = run.dead.values().filter(|r| *r == "future_event").count();
        assert_eq!(future_dead, future, "{name}: events from the future are dead-lettered");
        // Late-routed events miss every window; with the 5-minute hopping metric none of these can. The
        // late ledger holds every event that missed some window (1-minute tumbling, sessions).
        assert!(run.late as f64 <= 1.5 * generated_late as f64, "{name}: {} late-routed", run.late);
        let ledgered = run.late_coords.len();
        assert!(
            ledgered as f64 <= 1.5 * generated_late as f64,
            "{name}: {ledgered} events in the late ledger for {generated_late} generated late ones"
        );
        assert!(ledgered > 0, "{name}: with 15 s allowed lateness some of the 20-40 s late events miss a window");
        assert_eq!(causes(run).get("unexplained"), None, "{name}: {}", run.reconcile);
    }
    // The backlog replays the live run: the same records dead-lettered, the same late events (live
    // delivery has millisecond jitter between partitions, which may move an event near a boundary).
    assert_eq!(backlog.dead, live.dead);
    assert_eq!(backlog.duplicates, live.duplicates);
    let differ = backlog.late_coords.symmetric_difference(&live.late_coords).count();
    assert!(differ <= 2, "late events differ: backlog {} live {}", backlog.late_coords.len(), live.late_coords.len());
}

/// The partition of a line: its user's hash (the test places records itself, so it knows where each is).
fn partition_of(line: &str) -> i32 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    let user = v.get("user").and_then(|u| u.as_str()).unwrap_or("none");
    let h = user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    i32::try_from(h % PARTITIONS as u64).unwrap()
}

/// Produces `lines` (gen's JSON lines with `received_at`), each on its partition, stamped with its arrival.
async fn produce_lines(bootstrap: &str, topic: &str, lines: &[(i32, String)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    let mut ms = 0;
    for (p, l) in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        // a line without a readable arrival (some malformed ones) arrives with the line before it, as gen sends it
        if let Some(at) = v.get("received_at").and_then(|r| r.as_str()).and_then(EventTime::parse_rfc3339) {
            ms = at.as_micros() / 1000;
        }
        let record = FutureRecord::<(), str>::to(topic).partition(*p).payload(l.as_str()).timestamp(ms);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_24_a_producer_clock_minutes_ahead_changes_no_other_events_fate() {
    let broker = Broker::start().await;
    let bootstrap = broker.bootstrap().to_owned();
    let tmp = tempfile::tempdir().unwrap();
    future_lines(tmp.path());
    let lines: Vec<(i32, String)> = std::fs::read_to_string(tmp.path().join("lines.jsonl"))
        .unwrap()
        .lines()
        .map(|l| (partition_of(l), l.to_owned()))
        .collect();
    // On every partition, at 20% and 80% of the stream, a view from a producer whose clock runs 2 minutes
    // ahead (ts = arrival + 2 m): two per partition, the number the default `suspect_confirmations = 3`
    // tolerates, more than 1,000 trusted events apart.
    let mut dirty = Vec::new();
    let mut skewed = 0u64;
    for (i, (p, l)) in lines.iter().enumerate() {
        dirty.push((*p, l.clone()));
        if i == lines.len() / 5 || i == lines.len() * 4 / 5 {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let at = EventTime::parse_rfc3339(v["received_at"].as_str().unwrap()).unwrap();
            let ahead = EventTime::from_micros(at.as_micros() + 120_000_000).unwrap();
            for q in 0..PARTITIONS {
                dirty.push((
                    q,
                    format!(
                        r#"{{"event_id":"skew-{i}-{q}","ts":"{ahead}","received_at":"{at}","user":"skew{q}","page":"/skew","country":"XX","latency_ms":1,"bytes":1}}"#
                    ),
                ));
                skewed += 1;
            }
        }
    }
    let mut runs = Vec::new();
    for (topic, input) in [("clean", &lines), ("skewed", &dirty)] {
        let dir = tmp.path().join(topic);
        std::fs::create_dir_all(&dir).unwrap();
        broker.create_topic(topic, PARTITIONS).await;
        produce_lines(&bootstrap, topic, input).await;
        let spec = write_spec(&dir, &bootstrap, topic);
        let log = dir.join("stream.log");
        runs.push(finish(spawn_stream(&spec, &log), &dir, &spec, &log, input.len() as u64).await);
    }
    let (clean, dirty) = (&runs[0], &runs[1]);
    println!("clean: {} {:?}\nskewed: {} {:?}", clean.suspects, clean.late_sample, dirty.suspects, dirty.late_sample);
    assert_eq!(dirty.consumed, clean.consumed + skewed);
    assert_eq!(dirty.aggregated, clean.aggregated + skewed, "the skewed events are aggregated");
    assert_eq!(dirty.late, clean.late, "and no other event's fate changed");
    assert_eq!(dirty.late_coords.len(), clean.late_coords.len());
    assert_eq!(dirty.dead_lettered, clean.dead_lettered);
    assert_eq!((clean.suspects, dirty.suspects), (0, skewed), "each skewed event was held back as a suspect");
    assert!(!clean.late_coords.is_empty(), "some events are late in the clean run too");
    assert_eq!(causes(dirty).get("unexplained"), None, "{}", dirty.reconcile);
}
