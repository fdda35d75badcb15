//! The late ledger (`DeadLetterStore::append_late`, `list_late_range`) on the local filesystem.

use std::sync::atomic::Ordering;

use object_store::ObjectStoreExt;
use tidemark_core::{EventTime, SourceCoordinates};
use tidemark_store::{DeadLetterStore, LateRecord};

const HOUR: i64 = 3_600_000_000;
/// 2026-11-23T00:00:00Z.
const DAY0: i64 = 1_795_392_000_000_000;

fn t(us: i64) -> EventTime {
    EventTime::from_micros(us).unwrap()
}

fn late(offset: i64, event_us: i64) -> LateRecord {
    let event_time = t(event_us);
    LateRecord {
        coordinates: SourceCoordinates { source: "page views/ü".into(), partition: 2, offset },
        event_time,
        body: serde_json::json!({ "event_id": format!("e{offset}"), "event_time": event_time.to_string() }),
    }
}

fn store(dir: &std::path::Path) -> DeadLetterStore {
    DeadLetterStore::open(&format!("file://{}", dir.display())).unwrap()
}

/// Issue 19: the ledger files records by event hour; a read of one day lists and fetches only that day's
/// records (and the hours of the neighbours it touches), not the rest of the ledger.
#[tokio::test]
async fn issue_19_a_range_read_of_the_late_ledger_lists_only_its_days() {
    let dir = tempfile::tempdir().unwrap();
    let dl = store(dir.path());
    // four records per day over three days, at 00:30, 06:00, 12:00 and 23:30
    let mut records = Vec::new();
    for day in 0..3 {
        for (i, h) in [(0, HOUR / 2), (1, 6 * HOUR), (2, 12 * HOUR), (3, 23 * HOUR + HOUR / 2)] {
            records.push(late(day * 10 + i, DAY0 + day * 24 * HOUR + h));
        }
    }
    assert_eq!(dl.append_late(&records).await.unwrap(), 12);
    assert_eq!(dl.append_late(&records).await.unwrap(), 0, "a replay writes nothing");
    let layout = dir.path().join("late_by_hour/2026-11-24/06").join(hex_of("page views/ü")).join("2");
    assert!(
        layout.join("00000000000000000011-00000000000000000011.jsonl").is_file(),
        "filed under the event's date and hour"
    );

    let fresh = store(dir.path());
    let day1 = fresh.list_late_range(t(DAY0 + 24 * HOUR), t(DAY0 + 48 * HOUR)).await.unwrap();
    assert_eq!(day1, records[4..8].to_vec());
    assert_eq!(fresh.stats().objects_read.load(Ordering::Relaxed), 4, "no other day's record was fetched");
    // the day's own folder and the (empty) old layout
    assert_eq!(fresh.stats().lists.load(Ordering::Relaxed), 2);

    // a range with ragged ends: 23:00 of day 0 to 01:00 of day 2, by hour at the ends
    let fresh = store(dir.path());
    let got = fresh.list_late_range(t(DAY0 + 23 * HOUR), t(DAY0 + 49 * HOUR)).await.unwrap();
    assert_eq!(got, records[3..9].to_vec());
    assert_eq!(fresh.stats().objects_read.load(Ordering::Relaxed), 6);
    // the whole ledger
    assert_eq!(fresh.list_late().await.unwrap(), records);
}

/// Issue 19: records written before the hourly layout (`late/<hex(source)>/<partition>/<offset>.json`,
/// without an `event_time` field) are still found by range reads, filtered by the body's event time, and
/// a record held in both layouts is returned once.
#[tokio::test]
async fn issue_19_old_layout_late_records_are_still_found() {
    let dir = tempfile::tempdir().unwrap();
    let (store_, base) = tidemark_store::objects::open(
        &url::Url::parse(&format!("file://{}", dir.path().display())).unwrap(),
        &Default::default(),
    )
    .unwrap();
    let old = [late(1, DAY0 + HOUR), late(2, DAY0 + 30 * HOUR), late(3, DAY0 + 50 * HOUR)];
    for r in &old {
        let c = &r.coordinates;
        let path = base
            .clone()
            .join("late")
            .join(hex_of(&c.source).as_str())
            .join(c.partition.to_string().as_str())
            .join(format!("{:020}.json", c.offset).as_str());
        // the old layout's JSON: coordinates and body only
        let json = serde_json::json!({ "coordinates": c, "body": r.body });
        store_.put(&path, serde_json::to_vec(&json).unwrap().into()).await.unwrap();
    }
    let dl = store(dir.path());
    // a replay after the upgrade files record 2 again under its hour
    dl.append_late(&[old[1].clone(), late(4, DAY0 + 31 * HOUR)]).await.unwrap();

    let day1 = dl.list_late_range(t(DAY0 + 24 * HOUR), t(DAY0 + 48 * HOUR)).await.unwrap();
    assert_eq!(day1, vec![old[1].clone(), late(4, DAY0 + 31 * HOUR)]);
    assert_eq!(dl.list_late().await.unwrap().len(), 4);
    let day2 = dl.list_late_range(t(DAY0 + 48 * HOUR), t(DAY0 + 72 * HOUR)).await.unwrap();
    assert_eq!(day2, vec![old[2].clone()]);
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Issue 19: one append writes one object per event hour (and source partition), not one per record, and
/// a replay cut differently stores records twice but every read returns each once.
#[tokio::test]
async fn issue_19_an_append_writes_one_ledger_object_per_hour() {
    let dir = tempfile::tempdir().unwrap();
    let dl = store(dir.path());
    // 300 records over 00:00-02:59 of day 0, offsets in arrival order, times out of order
    let records: Vec<LateRecord> = (0..300).map(|i| late(i, DAY0 + (i * 7919 % 300) * 36_000_000)).collect();
    assert_eq!(dl.append_late(&records).await.unwrap(), 300);
    let files: Vec<_> = walk(dir.path());
    assert_eq!(files.len(), 3, "one object per hour: {files:?}");
    assert!(files.iter().all(|f| f.ends_with(".jsonl")), "{files:?}");
    // the same append again writes nothing; a replay of the last 100 as their own append writes them again
    assert_eq!(dl.append_late(&records).await.unwrap(), 0);
    assert!(dl.append_late(&records[200..]).await.unwrap() > 0);
    assert!(walk(dir.path()).len() > 3);

    let fresh = store(dir.path());
    let mut want = records.clone();
    want.sort_by(|a, b| a.coordinates.cmp(&b.coordinates));
    assert_eq!(fresh.list_late().await.unwrap(), want, "one record per coordinates");
    let fresh = store(dir.path());
    let hour1 = fresh.list_late_range(t(DAY0 + HOUR), t(DAY0 + 2 * HOUR)).await.unwrap();
    let want1: Vec<_> =
        want.iter().filter(|r| r.event_time >= t(DAY0 + HOUR) && r.event_time < t(DAY0 + 2 * HOUR)).cloned().collect();
    assert_eq!(want1.len(), 100);
    assert_eq!(hour1, want1);
    // hour 1's two objects (the append's and the replay's), nothing of hours 0 and 2
    assert_eq!(fresh.stats().objects_read.load(Ordering::Relaxed), 2);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}
