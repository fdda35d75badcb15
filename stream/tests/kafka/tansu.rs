//! Against a real Kafka-protocol broker: tansu with in-memory storage.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tidemark_stream::testing::Broker;
use tidemark_stream::{Assignment, Clock, Offsets, Source, SystemClock};

use crate::common::*;

const PATIENCE: Duration = Duration::from_secs(60);

/// Produces `per_partition` records (indices `from..from + per_partition`) to each of `partitions`.
async fn fill(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    from: usize,
    per_partition: usize,
    produced: &mut Produced,
) {
    for p in 0..partitions {
        let batch = payloads(p, from, from + per_partition);
        let offsets = broker.produce(topic, p, &batch).await;
        record_produced(produced, p, &offsets, &batch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_3000_records_from_3_partitions_exactly_once() {
    let broker = Broker::start().await;
    let topic = unique("orders");
    broker.create_topic(&topic, 3).await;
    let before = SystemClock.now();
    let mut produced = Produced::new();
    fill(&broker, &topic, 3, 0, 1000, &mut produced).await;
    assert_eq!(produced.len(), 3000);

    let store = Store::default();
    let mut m = Member::new(&config(broker.bootstrap(), &topic, &unique("g")), &store);
    consume_until(&mut [&mut m], 3000, PATIENCE).await;
    // Nothing more arrives: no duplicates hiding behind the count.
    assert_eq!(poll_for(&mut m, Duration::from_millis(500)).await, 0);
    let after = SystemClock.now();

    assert_exactly_once(&topic, &m.records.iter().collect::<Vec<_>>(), &produced);
    assert_in_order(&m.records);
    let all: Vec<_> = (0..3).map(|p| (topic.clone(), p)).collect();
    assert_eq!(m.events.first(), Some(&Assignment::Assigned(all.clone())));
    assert_eq!(m.source.assignment(), all);
    // received_at is the producer's timestamp (milliseconds) within the test's time span.
    let slack = tidemark_core::Duration::from_secs(1);
    for r in &m.records {
        assert!(
            r.received_at >= before.saturating_sub(slack) && r.received_at <= after.saturating_add(slack),
            "{} received_at {:?} not within [{before:?}, {after:?}]",
            r.coords,
            r.received_at
        );
        assert_eq!(r.received_at.as_micros() % 1000, 0, "Kafka timestamps are milliseconds");
    }
    let final_store: Offsets = store.lock().unwrap().clone();
    assert_eq!(final_store, (0..3).map(|p| ((topic.clone(), p), 1000)).collect::<Offsets>());
    m.source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_resumes_exactly_at_the_given_offsets_and_ignores_group_offsets() {
    let broker = Broker::start().await;
    let topic = unique("seek");
    broker.create_topic(&topic, 3).await;
    // tansu serves a fetch only from a record batch's first offset (a fetch inside a batch returns
    // nothing), so the seek offsets 10 and 95 start batches here; `faults` seeks inside batches.
    let mut produced = Produced::new();
    for (from, to) in [(0, 10), (10, 95), (95, 100)] {
        fill(&broker, &topic, 3, from, to - from, &mut produced).await;
    }
    let group = unique("g");

    // p0 resumes at 10, p1 at 95, p2 (absent) from the beginning.
    let store = Store::default();
    store.lock().unwrap().extend([((topic.clone(), 0), 10), ((topic.clone(), 1), 95)]);
    let mut m = Member::new(&config(broker.bootstrap(), &topic, &group), &store);
    consume_until(&mut [&mut m], 90 + 5 + 100, PATIENCE).await;
    assert_eq!(poll_for(&mut m, Duration::from_millis(500)).await, 0);
    let expected: Produced =
        produced.iter().filter(|((p, o), _)| *o >= [10, 95, 0][*p as usize]).map(|(k, v)| (*k, v.clone())).collect();
    assert_exactly_once(&topic, &m.records.iter().collect::<Vec<_>>(), &expected);
    assert_in_order(&m.records);

    // committed() also wrote the offsets to the group (informational): wait until the broker has them.
    let bootstrap = broker.bootstrap().to_owned();
    let (t, g) = (topic.clone(), group.clone());
    let group_offsets = tokio::task::spawn_blocking(move || {
        let probe: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &bootstrap).set("group.id", &g).create().unwrap();
        let started = std::time::Instant::now();
        loop {
            let mut tpl = TopicPartitionList::new();
            for p in 0..3 {
                tpl.add_partition(&t, p);
            }
            // Converted to plain values at once: a live committed() list can hang the consumer's drop.
            let got: Vec<Offset> = probe
                .committed_offsets(tpl, Duration::from_secs(5))
                .map(|l| l.elements().iter().map(|e| e.offset()).collect())
                .unwrap_or_default();
            if got == vec![Offset::Offset(100); 3] || started.elapsed() > Duration::from_secs(20) {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    assert_eq!(group_offsets, vec![Offset::Offset(100); 3], "the group's committed offsets");
    m.source.close().await;

    // A new member of the same group with an empty store starts from the beginning: the group's offsets
    // never position the source (a wiped store replays rather than skips).
    let fresh = Store::default();
    let mut again = Member::new(&config(broker.bootstrap(), &topic, &group), &fresh);
    consume_until(&mut [&mut again], 300, PATIENCE).await;
    assert_exactly_once(&topic, &again.records.iter().collect::<Vec<_>>(), &produced);
    again.source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_deliveries_and_resume_restarts_them() {
    let broker = Broker::start().await;
    let topic = unique("pause");
    broker.create_topic(&topic, 3).await;
    let mut produced = Produced::new();
    fill(&broker, &topic, 3, 0, 100, &mut produced).await;

    // Paused before the assignment: partitions are assigned paused.
    let store = Store::default();
    let mut m = Member::new(&config(broker.bootstrap(), &topic, &unique("g")), &store);
    m.source.pause().unwrap();
    assert_eq!(poll_for(&mut m, Duration::from_secs(3)).await, 0, "records delivered while paused");
    assert_eq!(m.assigned().len(), 3, "assignments are reported while paused: {:?}", m.events);
    m.source.resume().unwrap();
    consume_until(&mut [&mut m], 300, PATIENCE).await;

    // Paused while assigned: new records wait until resume.
    m.source.pause().unwrap();
    fill(&broker, &topic, 3, 100, 50, &mut produced).await;
    assert_eq!(poll_for(&mut m, Duration::from_secs(2)).await, 0, "records delivered while paused");
    m.source.resume().unwrap();
    consume_until(&mut [&mut m], 450, PATIENCE).await;
    assert_eq!(poll_for(&mut m, Duration::from_millis(500)).await, 0);
    assert_exactly_once(&topic, &m.records.iter().collect::<Vec<_>>(), &produced);
    assert_in_order(&m.records);
    m.source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_share_the_partitions_and_each_record_goes_to_one() {
    let broker = Broker::start().await;
    let topic = unique("group");
    broker.create_topic(&topic, 3).await;
    let mut produced = Produced::new();
    fill(&broker, &topic, 3, 0, 500, &mut produced).await;
    let group = unique("g");
    let store = Store::default();
    let cfg = config(broker.bootstrap(), &topic, &group);

    let mut a = Member::new(&cfg, &store);
    consume_until(&mut [&mut a], 1500, PATIENCE).await;
    let all: Vec<_> = (0..3).map(|p| (topic.clone(), p)).collect();
    assert_eq!(a.assigned(), all);

    // B joins: poll both until they hold disjoint assignments covering every partition.
    let mut b = Member::new(&cfg, &store);
    let started = tokio::time::Instant::now();
    loop {
        a.poll(Duration::from_millis(100)).await;
        b.poll(Duration::from_millis(100)).await;
        let (pa, pb) = (a.assigned(), b.assigned());
        if !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 3 {
            let mut union = [pa.clone(), pb.clone()].concat();
            union.sort();
            assert_eq!(union, all, "assignments overlap or miss partitions: {pa:?} / {pb:?}");
            break;
        }
        assert!(started.elapsed() < PATIENCE, "no rebalance: a {pa:?} ({:?}), b {pb:?} ({:?})", a.events, b.events);
    }
    assert!(
        a.events.iter().any(|e| matches!(e, Assignment::Revoked(_))),
        "a's revocation not reported: {:?}",
        a.events
    );
    assert_eq!(a.source.assignment(), a.assigned());
    assert_eq!(b.source.assignment(), b.assigned());

    fill(&broker, &topic, 3, 500, 500, &mut produced).await;
    consume_until(&mut [&mut a, &mut b], 3000, PATIENCE).await;
    // Each member reports end offsets for its own partitions only (revoked ones are dropped).
    for m in [&mut a, &mut b] {
        let own: Offsets = m.assigned().into_iter().map(|p| (p, 1000)).collect();
        wait_for_end_offsets(m, &own).await;
    }
    for _ in 0..5 {
        assert_eq!(a.poll(Duration::from_millis(100)).await + b.poll(Duration::from_millis(100)).await, 0);
    }
    let delivered: Vec<_> = a.records.iter().chain(&b.records).collect();
    assert_exactly_once(&topic, &delivered, &produced);
    // After the rebalance each member read only its own partitions, and both read some.
    let (pa, pb) = (a.assigned(), b.assigned());
    let late_a: Vec<_> = a.records[1500..].iter().map(|r| (r.coords.source.clone(), r.coords.partition)).collect();
    assert!(late_a.iter().all(|p| pa.contains(p)), "a read partitions it does not own");
    assert!(b.records.iter().all(|r| pb.contains(&(r.coords.source.clone(), r.coords.partition))));
    assert_eq!(late_a.len() + b.records.len(), 1500);
    assert_eq!(b.records.len(), 500 * pb.len());
    assert_eq!(late_a.len(), 500 * pa.len());
    a.source.close().await;
    b.source.close().await;
}

/// Polls (paused or not) until `end_offsets()` equals `expected`, or panics after a few seconds.
async fn wait_for_end_offsets(m: &mut Member, expected: &Offsets) {
    let started = tokio::time::Instant::now();
    loop {
        let ends = m.source.end_offsets();
        if &ends == expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "end offsets {ends:?}, expected {expected:?} (statistics every second)"
        );
        m.poll(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_offsets_report_each_partitions_high_watermark() {
    let broker = Broker::start().await;
    let topic = unique("lag");
    broker.create_topic(&topic, 3).await;
    let mut produced = Produced::new();
    fill(&broker, &topic, 3, 0, 200, &mut produced).await;

    let store = Store::default();
    let mut m = Member::new(&config(broker.bootstrap(), &topic, &unique("g")), &store);
    assert_eq!(m.source.end_offsets(), Offsets::new(), "nothing known before the assignment");
    // Consume some, then stop fetching: the lag (end - committed) stays positive while polls go on.
    consume_until(&mut [&mut m], 100, PATIENCE).await;
    m.source.pause().unwrap();
    let ends = |n: i64| (0..3).map(|p| ((topic.clone(), p), n)).collect::<Offsets>();
    wait_for_end_offsets(&mut m, &ends(200)).await;
    let consumed = store.lock().unwrap().clone();
    let lag: i64 = ends(200).iter().map(|(p, end)| end - consumed.get(p).copied().unwrap_or(0)).sum();
    assert_eq!(lag, 600 - i64::try_from(m.records.len()).unwrap(), "lag {lag} after {:?}", consumed);
    assert!(lag > 0);

    // New records move the end offsets once fetched again; after consuming everything the lag is zero.
    fill(&broker, &topic, 3, 200, 50, &mut produced).await;
    m.source.resume().unwrap();
    consume_until(&mut [&mut m], 750, PATIENCE).await;
    wait_for_end_offsets(&mut m, &ends(250)).await;
    assert_eq!(*store.lock().unwrap(), ends(250), "everything consumed");
    assert_exactly_once(&topic, &m.records.iter().collect::<Vec<_>>(), &produced);
    m.source.close().await;
}

/// Issue 24: records come out in arrival (record timestamp) order across partitions, however the
/// partitions' data was fetched: partition 0 holds the early half of the arrivals and partition 1 the
/// late half, interleaved by timestamp; the source must not hand out partition 1's records before
/// partition 0's earlier ones. Each record's `received_at` is its timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_24_records_come_in_arrival_order_across_partitions() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let broker = Broker::start().await;
    let topic = unique("arrivals");
    broker.create_topic(&topic, 2).await;
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).set("linger.ms", "5").create().unwrap();
    // partition p gets the records with arrival 1_700_000_000_000 + 10 ms * (2 i + p), i < 500; partition 1
    // is produced first, so its data is on the broker (and fetched) before partition 0's
    let base = 1_700_000_000_000i64;
    for p in [1, 0] {
        let mut pending = Vec::new();
        for i in 0..500i64 {
            let ms = base + 10 * (2 * i + i64::from(p));
            let payload = format!("{p}-{i}");
            let record = FutureRecord::<(), str>::to(&topic).partition(p).payload(&payload).timestamp(ms);
            pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        for d in pending {
            d.await.unwrap().unwrap();
        }
    }
    let store = Store::default();
    let mut m = Member::new(&config(broker.bootstrap(), &topic, &unique("g")), &store);
    consume_until(&mut [&mut m], 1000, PATIENCE).await;
    let arrivals: Vec<i64> = m.records.iter().map(|r| r.received_at.as_micros() / 1000).collect();
    let expected: Vec<i64> = (0..1000).map(|k| base + 10 * k).collect();
    assert_eq!(arrivals, expected, "merged by arrival across the two partitions");
    m.source.close().await;

    // A spec that demands the broker's append time refuses records stamped by their producer.
    let config =
        config(broker.bootstrap(), &topic, &unique("g")).arrival(tidemark_core::spec::KafkaArrival::LogAppendTime);
    let mut source = config.build().unwrap();
    source.seek(&Offsets::new()).unwrap();
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    let err = loop {
        match source.poll(&mut out, 100, Duration::from_millis(200)).await {
            Err(e) => break e,
            Ok(_) => assert!(started.elapsed() < PATIENCE, "no error after {} records", out.len()),
        }
    };
    assert!(out.is_empty());
    let text = err.to_string();
    assert!(text.contains("source.arrival") && text.contains("CreateTime"), "{text}");
    assert_eq!(err.actor(), tidemark_core::Actor::User);
    source.close().await;
}
