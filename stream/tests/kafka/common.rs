//! A miniature service around [`KafkaSource`]: it commits what it consumed to a shared "store" after every
//! poll and seeks newly assigned partitions to the store's offsets, as the stream service does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidemark_core::spec::ClientOption;
use tidemark_stream::{Assignment, KafkaConfig, KafkaSource, Offsets, Partition, Record, Source};

/// Offsets committed with the serving store's rows, shared by the members of a group.
pub type Store = Arc<Mutex<Offsets>>;

/// A name unique in this test run.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The payload of record `i` of `partition`.
pub fn payload(partition: i32, i: usize) -> Vec<u8> {
    format!("{{\"partition\":{partition},\"i\":{i}}}").into_bytes()
}

/// Payloads `from..to` of `partition`.
pub fn payloads(partition: i32, from: usize, to: usize) -> Vec<Vec<u8>> {
    (from..to).map(|i| payload(partition, i)).collect()
}

/// A config with a short heartbeat so rebalances happen within a second or two.
pub fn config(bootstrap: &str, topic: &str, group: &str) -> KafkaConfig {
    KafkaConfig::new(bootstrap, topic, group)
        .option("heartbeat.interval.ms", ClientOption::Literal("300".into()))
        .option("session.timeout.ms", ClientOption::Literal("10000".into()))
        .option("reconnect.backoff.max.ms", ClientOption::Literal("500".into()))
}

/// One source with the bookkeeping of a service.
#[derive(Debug)]
pub struct Member {
    pub source: KafkaSource,
    /// Every record delivered, in delivery order.
    pub records: Vec<Record>,
    /// Every assignment change reported, in order.
    pub events: Vec<Assignment>,
    store: Store,
}

impl Member {
    /// Builds the source and seeks it to the store's offsets.
    pub fn new(config: &KafkaConfig, store: &Store) -> Member {
        let mut source = config.build().expect("build the Kafka source");
        let offsets = store.lock().unwrap().clone();
        source.seek(&offsets).expect("seek");
        Member { source, records: Vec::new(), events: Vec::new(), store: Arc::clone(store) }
    }

    /// One poll; commits what it got to the store and the source, then seeks newly assigned partitions
    /// to the store's offsets. Returns the number of records.
    pub async fn poll(&mut self, wait: Duration) -> usize {
        let mut out = Vec::new();
        let polled = self.source.poll(&mut out, 500, wait).await.expect("poll");
        assert_eq!(polled.records, out.len(), "Polled::records must count the records appended");
        let mut done = Offsets::new();
        for r in &out {
            let next = done.entry((r.coords.source.clone(), r.coords.partition)).or_insert(0);
            *next = (*next).max(r.coords.offset + 1);
        }
        {
            let mut store = self.store.lock().unwrap();
            for (p, o) in &done {
                let e = store.entry(p.clone()).or_insert(0);
                *e = (*e).max(*o);
            }
        }
        self.source.committed(&done).expect("committed");
        for event in polled.assignments {
            if let Assignment::Assigned(parts) = &event {
                let store = self.store.lock().unwrap();
                let offsets: Offsets = parts.iter().filter_map(|p| store.get(p).map(|o| (p.clone(), *o))).collect();
                drop(store);
                self.source.seek(&offsets).expect("seek assigned partitions");
            }
            self.events.push(event);
        }
        self.records.extend(out);
        polled.records
    }

    /// The partitions assigned according to the reported events.
    pub fn assigned(&self) -> Vec<Partition> {
        let mut now = std::collections::BTreeSet::new();
        for e in &self.events {
            match e {
                Assignment::Assigned(ps) => now.extend(ps.iter().cloned()),
                Assignment::Revoked(ps) => {
                    for p in ps {
                        now.remove(p);
                    }
                }
            }
        }
        now.into_iter().collect()
    }
}

/// Polls `members` in turn until they delivered `total` records together, or panics after `patience`.
pub async fn consume_until(members: &mut [&mut Member], total: usize, patience: Duration) {
    let started = tokio::time::Instant::now();
    loop {
        let got: usize = members.iter().map(|m| m.records.len()).sum();
        if got >= total {
            return;
        }
        assert!(started.elapsed() < patience, "only {got} of {total} records delivered in {patience:?}");
        for m in members.iter_mut() {
            m.poll(Duration::from_millis(100)).await;
        }
    }
}

/// Polls for `period` and returns how many records arrived.
pub async fn poll_for(member: &mut Member, period: Duration) -> usize {
    let started = tokio::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < period {
        n += member.poll(Duration::from_millis(100)).await;
    }
    n
}

/// What was produced: (partition, offset) -> payload.
pub type Produced = BTreeMap<(i32, i64), Vec<u8>>;

/// Adds a produce call's result to `produced`.
pub fn record_produced(produced: &mut Produced, partition: i32, offsets: &[i64], payloads: &[Vec<u8>]) {
    assert_eq!(offsets.len(), payloads.len());
    for (o, p) in offsets.iter().zip(payloads) {
        assert!(
            produced.insert((partition, *o), p.clone()).is_none(),
            "broker reused offset {o} of partition {partition}"
        );
    }
}

/// Every produced record was delivered exactly once, with its topic, partition, offset and payload.
pub fn assert_exactly_once(topic: &str, delivered: &[&Record], produced: &Produced) {
    let mut seen = Produced::new();
    for r in delivered {
        assert_eq!(r.coords.source, topic, "record from the wrong topic: {}", r.coords);
        let key = (r.coords.partition, r.coords.offset);
        assert!(seen.insert(key, r.payload.clone()).is_none(), "record {} delivered twice", r.coords);
    }
    let missing: Vec<_> = produced.keys().filter(|k| !seen.contains_key(k)).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} records never delivered, e.g. {missing:?}",
        produced.len().saturating_sub(seen.len())
    );
    assert_eq!(seen.len(), produced.len(), "records delivered that were never produced");
    assert_eq!(&seen, produced, "payloads differ from what was produced");
}

/// Within one member, each partition's records arrive in offset order without gaps.
pub fn assert_in_order(records: &[Record]) {
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for r in records {
        if let Some(prev) = last.insert(r.coords.partition, r.coords.offset) {
            assert_eq!(
                r.coords.offset,
                prev + 1,
                "partition {} jumped from {prev} to {}",
                r.coords.partition,
                r.coords.offset
            );
        }
    }
}
