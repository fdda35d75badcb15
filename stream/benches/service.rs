//! The stream service end to end against the local Kafka-protocol broker (tansu) and real stores.
//!
//! `cargo bench -p tidemark-stream --bench service` (needs the tansu binary that scripts/setup.sh installs,
//! and the Postgres server binaries). Two measurements per store (Delta on the local filesystem, Postgres):
//!
//! - **throughput**: `TIDEMARK_BENCH_BACKLOG` events (default 300,000) produced first, then the service
//!   consumes the backlog; events per second from start to the commit covering the last offset.
//! - **latency**: events produced at `TIDEMARK_BENCH_RATE` per second (default 50,000) for
//!   `TIDEMARK_BENCH_SECS` (default 20) while the service runs with a 250 ms flush interval and 250 ms
//!   early firings. An event's latency is from its send to the moment the store's committed progress
//!   covers its offset (read from the store every 10 ms), i.e. the commit that carries its effect; rows of
//!   windows still open are refreshed by early firings, so on a dashboard they can lag up to one early
//!   firing interval more.
//!
//! `TIDEMARK_BENCH_STORES` = `delta,postgres` (default) selects the stores.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tidemark_core::{PipelineSpec, ValidSpec};
use tidemark_store::{DeadLetterStore, RawArchive, ServingStore};
use tidemark_stream::metrics::{FlushStep, Metrics};
use tidemark_stream::testing::Broker;
use tidemark_stream::{KafkaConfig, Service, ServiceConfig, Sinks, SystemClock};

const PARTITIONS: i32 = 3;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn spec(dir: &Path, bootstrap: &str, topic: &str, serving: &str) -> ValidSpec {
    let url = |s: &str| format!("file://{}", dir.join(s).display());
    let text = format!(
        r#"
version = 1
name = "bench"
[source]
type = "kafka"
brokers = "{bootstrap}"
topic = "{topic}"
group = "bench-{topic}"
[event]
id = "id"
time = {{ field = "ts", format = "epoch_us" }}
dimensions = ["page"]
values = {{ ms = "int" }}
[time]
watermark_delay = "2s"
allowed_lateness = "1m"
early_firing = "250ms"
[[metrics]]
name = "views"
dimensions = ["page"]
window = {{ type = "tumbling", size = "1m" }}
aggregates = [{{ name = "n", fn = "count" }}, {{ name = "ms", fn = "sum", field = "ms" }}, {{ name = "hi", fn = "max", field = "ms" }}]
[stores]
raw_archive = "{raw}"
serving = "{serving}"
dead_letter = "{dead}"
batch_view = "{batch}"
"#,
        raw = url("raw"),
        dead = url("dead"),
        batch = url("batch"),
    );
    PipelineSpec::parse(&text, "bench.toml", Some(dir)).expect("valid bench spec")
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Sends `count` events round-robin over the partitions at `rate` per second (0: as fast as possible);
/// records each send's time per partition in offset order (a fresh topic, one producer, in-order sends).
async fn produce(bootstrap: &str, topic: &str, count: u64, rate: u64, sent: Arc<Mutex<Vec<Vec<Instant>>>>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("max.in.flight.requests.per.connection", "1")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let start = Instant::now();
    let mut deliveries = Vec::new();
    for i in 0..count {
        if rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                tokio::time::sleep(due - now).await;
            }
        }
        let p = (i % PARTITIONS as u64) as i32;
        let payload = format!(r#"{{"id":"e{i}","ts":{},"page":"/p{}","ms":{}}}"#, now_us(), i % 1000, i % 700);
        let mut record = FutureRecord::<(), str>::to(topic).partition(p).payload(payload.as_str());
        loop {
            match producer.send_result(record) {
                Ok(d) => {
                    sent.lock().unwrap()[p as usize].push(Instant::now());
                    deliveries.push(d);
                    break;
                }
                Err((_, r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        if deliveries.len() >= 10_000 {
            for d in deliveries.drain(..) {
                d.await.expect("delivered").expect("delivered");
            }
        }
    }
    for d in deliveries {
        d.await.expect("delivered").expect("delivered");
    }
}

struct Run {
    events: u64,
    secs: f64,
    latencies_ms: Vec<f64>,
    metrics: Arc<Metrics>,
}

/// One line per flush step: runs, mean and max milliseconds, share of the flushes' summed time.
fn print_steps(kind: &str, metrics: &Metrics) {
    let totals = metrics.step_totals();
    let flushes = totals.get(&FlushStep::Rows).map_or(0, |t| t.count);
    let all: f64 = totals.values().map(|t| t.seconds).sum();
    let steps: Vec<String> = FlushStep::ALL
        .iter()
        .filter_map(|s| totals.get(s).map(|t| (s, t)))
        .map(|(s, t)| {
            format!(
                "{} {:.1}/{:.0} ms ({:.0}%)",
                s.name(),
                t.seconds * 1e3 / t.count as f64,
                t.max_seconds * 1e3,
                100.0 * t.seconds / all
            )
        })
        .collect();
    println!(
        "{kind:9}   {flushes} flushes (last checkpoint {:.1} MB), mean/max per step: {}",
        metrics.checkpoint_bytes.get() as f64 / 1e6,
        steps.join(", ")
    );
}

/// Starts the service, produces, and watches the store's committed progress until it covers everything.
async fn run(broker: &Broker, store_kind: &str, topic: &str, count: u64, rate: u64, backlog_first: bool) -> Run {
    broker.create_topic(topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let serving = match store_kind {
        "postgres" => tidemark_store::testing::postgres().await.expect("postgres").conninfo,
        _ => format!("file://{}", dir.path().join("serving").display()),
    };
    let spec = spec(dir.path(), broker.bootstrap(), topic, &serving);
    let store: Arc<dyn ServingStore> = Arc::from(tidemark_store::open(&spec.serving_store()).await.unwrap());
    store.init().await.unwrap();
    let sent = Arc::new(Mutex::new(vec![Vec::new(); PARTITIONS as usize]));
    if backlog_first {
        produce(broker.bootstrap(), topic, count, 0, sent.clone()).await;
    }
    let stores = &spec.spec().stores;
    let sinks = Sinks {
        store: store.clone(),
        dead_letters: Arc::new(DeadLetterStore::open(&stores.dead_letter).unwrap()),
        archive: Some(Arc::new(RawArchive::open(stores.raw_archive.clone()).await.unwrap())),
    };
    let source = KafkaConfig::from_spec(&spec.spec().source).unwrap().build().unwrap();
    let config = ServiceConfig { flush_interval: Duration::from_millis(250), ..ServiceConfig::default() };
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let metrics = Arc::new(Metrics::new());
    let service = Service::start(&spec, source, sinks, Arc::new(SystemClock), config, metrics.clone()).await.unwrap();
    let service = tokio::spawn(service.run(stop.clone()));
    let producer = (!backlog_first).then(|| {
        let (b, t, s) = (broker.bootstrap().to_owned(), topic.to_owned(), sent.clone());
        tokio::spawn(async move { produce(&b, &t, count, rate, s).await })
    });

    let per_partition = |p: i32| count / PARTITIONS as u64 + u64::from((p as u64) < count % PARTITIONS as u64);
    let mut seen: BTreeMap<i32, i64> = BTreeMap::new();
    let mut latencies_ms = Vec::with_capacity(count as usize);
    loop {
        let progress = store.load_progress("bench").await.unwrap();
        let at = Instant::now();
        if let Some(p) = progress {
            let sent = sent.lock().unwrap();
            for (tp, &o) in &p.offsets {
                let prev = seen.entry(tp.partition).or_insert(0);
                for off in *prev..o {
                    if let Some(t) = sent[tp.partition as usize].get(off as usize) {
                        latencies_ms.push(at.duration_since(*t).as_secs_f64() * 1e3);
                    }
                }
                *prev = (*prev).max(o);
            }
        }
        if (0..PARTITIONS).all(|p| seen.get(&p).copied().unwrap_or(0) as u64 >= per_partition(p)) {
            break;
        }
        if service.is_finished() {
            panic!("the service stopped: {:?}", service.await.unwrap().err());
        }
        assert!(started.elapsed() < Duration::from_secs(600), "the service did not catch up: {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    if let Some(p) = producer {
        p.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    service.await.unwrap().unwrap();
    Run { events: count, secs, latencies_ms, metrics }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let backlog = env_u64("TIDEMARK_BENCH_BACKLOG", 300_000);
    let rate = env_u64("TIDEMARK_BENCH_RATE", 50_000);
    let secs = env_u64("TIDEMARK_BENCH_SECS", 20);
    let stores = std::env::var("TIDEMARK_BENCH_STORES").unwrap_or_else(|_| "delta,postgres".into());
    let broker = Broker::start().await;
    for (n, kind) in stores.split(',').enumerate() {
        let r = run(&broker, kind, &format!("backlog{n}"), backlog, 0, true).await;
        println!(
            "{kind:9} throughput: {} events from the broker in {:.2} s = {:.0} events/s",
            r.events,
            r.secs,
            r.events as f64 / r.secs
        );
        print_steps(kind, &r.metrics);
        let r = run(&broker, kind, &format!("live{n}"), rate * secs, rate, false).await;
        let mut l = r.latencies_ms.clone();
        l.sort_by(f64::total_cmp);
        println!(
            "{kind:9} latency at {rate} events/s for {secs} s ({} events, {:.1} s): send→committed p50 {:.0} ms, \
             p99 {:.0} ms, max {:.0} ms",
            l.len(),
            r.secs,
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l[l.len() - 1]
        );
        print_steps(kind, &r.metrics);
    }
}
