//! Issue 5 against a real Kafka-protocol broker (tansu, started by the test): `tidemark stream` consumes a
//! 3-partition topic; killed with SIGKILL at random moments and restarted, it ends with exactly what an
//! uninterrupted run ends with (rows, dead letters, late ledger, archive), offsets never going back; a
//! SIGTERM stops it with exit code 0 after committing everything consumed.

mod stream_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stream_common::outcome;
use tidemark_core::EventTime;
use tidemark_stream::testing::Broker;

const PARTITIONS: i32 = 3;
const PER_PARTITION: i64 = 20_000;
/// Each restart waits for the group to expel the killed member (session timeout 6 s; tansu 0.6.0 does not
/// support static membership, `group.instance.id`), so fewer kills than the file-source crash test.
const KILLS: usize = 10;

/// Per partition: events 50 ms apart with disorder under the watermark delay (so no event is late and
/// the result does not depend on how partitions interleave), duplicates, malformed records, and at the
/// end one event a day later that closes every window of the real data.
fn partition_payloads(p: i32) -> Vec<Vec<u8>> {
    let base = 1_700_000_000_000_000i64;
    let mut out = Vec::new();
    for i in 0..PER_PARTITION {
        let t = base + i * 50_000 - (i * 7_919 % 4_000_000);
        let ts = EventTime::from_micros(t).unwrap();
        let line = format!(
            r#"{{"id":"p{p}-{i}","ts":"{ts}","page":"/p{}","user":"u{}","ms":{}}}"#,
            (i + i64::from(p)) % 7,
            i % 97,
            i % 500
        );
        if i % 500 == 7 {
            out.push(line.clone().into_bytes()); // duplicate
        }
        if i % 1_000 == 3 {
            out.push(b"{\"id\": 1".to_vec()); // malformed
        }
        out.push(line.into_bytes());
    }
    let end = EventTime::from_micros(base + PER_PARTITION * 50_000 + 86_400_000_000).unwrap();
    out.push(format!(r#"{{"id":"end-{p}","ts":"{end}","page":"/end","user":"end","ms":0}}"#).into_bytes());
    out
}

fn write_spec(dir: &Path, bootstrap: &str, name: &str) -> PathBuf {
    let d = dir.join(name);
    let url = |s: &str| format!("file://{}", d.join(s).display());
    let spec = format!(
        r#"
version = 1
name = "kafkatest"
[source]
type = "kafka"
brokers = "{bootstrap}"
topic = "pageviews"
group = "tidemark-{name}"
[source.options]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
[event]
id = "id"
time = {{ field = "ts", format = "rfc3339" }}
dimensions = ["page", "user"]
values = {{ ms = "int" }}
[time]
watermark_delay = "10s"
allowed_lateness = "1m"
idle_timeout = "1h"
[[metrics]]
name = "views"
dimensions = ["page"]
window = {{ type = "tumbling", size = "1m" }}
aggregates = [{{ name = "n", fn = "count" }}, {{ name = "ms", fn = "sum", field = "ms" }}]
[[metrics]]
name = "visits"
dimensions = ["user"]
window = {{ type = "session", gap = "20s" }}
aggregates = [{{ name = "n", fn = "count" }}]
[stores]
raw_archive = "{raw}"
serving = "{serving}"
dead_letter = "{dead}"
batch_view = "{batch}"
"#,
        raw = url("raw"),
        serving = url("serving"),
        dead = url("dead"),
        batch = url("batch"),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, spec).unwrap();
    path
}

fn spawn(spec: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["stream", "--spec", spec.to_str().unwrap(), "--listen", "off", "--flush-interval", "50ms"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// The committed offsets (none while the service is still creating its tables).
async fn committed(dir: &Path, name: &str) -> BTreeMap<i32, i64> {
    stream_common::committed(&dir.join(name), "kafkatest").await.unwrap_or_default()
}

/// Waits until the committed offsets reach `ends`, then stops the service with SIGTERM (exit 0).
async fn drain_and_stop(mut child: Child, dir: &Path, name: &str, ends: &BTreeMap<i32, i64>, log: &Path) {
    let started = Instant::now();
    while committed(dir, name).await != *ends {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{name} exited early with {status}: {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{name} did not catch up: {:?} of {ends:?}; log: {}",
            committed(dir, name).await,
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // SIGTERM only once the service runs (its signal handler is installed by then).
    while !std::fs::read_to_string(log).unwrap_or_default().contains("partitions assigned") {
        assert!(started.elapsed() < Duration::from_secs(180), "{name} never got partitions");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM exit: {}", std::fs::read_to_string(log).unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sigkill_loop_matches_an_uninterrupted_run_issue_5() {
    let broker = Broker::start().await;
    broker.create_topic("pageviews", PARTITIONS).await;
    let mut ends = BTreeMap::new();
    for p in 0..PARTITIONS {
        let offsets = broker.produce("pageviews", p, &partition_payloads(p)).await;
        ends.insert(p, offsets.last().unwrap() + 1);
    }
    let dir = tempfile::tempdir().unwrap();

    let spec = write_spec(dir.path(), broker.bootstrap(), "reference");
    let log = dir.path().join("reference.log");
    let started = Instant::now();
    drain_and_stop(spawn(&spec, &log), dir.path(), "reference", &ends, &log).await;
    let reference_secs = started.elapsed().as_secs_f64();
    let reference = outcome(&dir.path().join("reference"), "kafkatest").await;
    let closed = reference.rows.keys().filter(|k| !k.contains("end")).count();
    assert!(closed > 100, "rows of the real data: {closed}");
    assert_eq!(reference.dead_letters.len(), 3 * 20);
    assert!(reference.late.is_empty(), "late: {:?}", reference.late);

    let spec = write_spec(dir.path(), broker.bootstrap(), "crashed");
    let log = dir.path().join("crashed.log");
    let mut rng = 0x5EED_u64;
    let max_ms = ((reference_secs * 800.0) as u64).clamp(300, 6000);
    let mut previous = BTreeMap::new();
    let mut history = Vec::new();
    for _ in 0..KILLS {
        let mut child = spawn(&spec, &log);
        // Kill at a random moment after the group assigned partitions (before that, nothing is consumed).
        let assigned = Instant::now();
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("partitions assigned") {
            assert!(
                assigned.elapsed() < Duration::from_secs(60),
                "no assignment: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        tokio::time::sleep(Duration::from_millis((rng >> 33) % max_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let now = committed(dir.path(), "crashed").await;
        for (p, o) in &previous {
            assert!(now.get(p).is_some_and(|n| n >= o), "partition {p} went back: {previous:?} -> {now:?}");
        }
        history.push(now.values().sum::<i64>());
        previous = now;
    }
    eprintln!("reference run {reference_secs:.1}s; records committed after each of {KILLS} kills: {history:?}");
    drain_and_stop(spawn(&spec, &log), dir.path(), "crashed", &ends, &log).await;
    let crashed = outcome(&dir.path().join("crashed"), "kafkatest").await;
    assert_eq!(crashed.archived, crashed.archived_distinct, "the archive holds a record twice");
    assert_eq!(crashed, reference);
}
