//! Engine checkpoints: the whole engine state as one self-describing blob (JSON).
//!
//! The blob holds the watermark tracker, accounting, source positions, the live events as received and,
//! per row, the log of operations that built its accumulators (core's accumulators are not
//! serializable); restoring decodes the events again and replays those logs.
//! It also holds a fingerprint of the spec's metrics, event schema and time policy: a blob is only
//! restored into an engine for the same definitions ([`Error::SpecChanged`] otherwise).

use std::collections::BTreeMap;

use foldhash::HashMap;

use serde::{Deserialize, Serialize};
use tidemark_core::{Dimensions, Event, EventTime, ValidSpec, Window};

use crate::engine::{Engine, MetricState, PartitionAccounts};
use crate::error::Error;
use crate::state::{EventTable, Op, RowState};
use crate::watermark::WatermarkTracker;
use crate::window::Step;

/// The checkpoint format this build writes and reads.
pub const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Blob {
    format: u32,
    spec_fingerprint: u64,
    watermarks: WatermarkTracker,
    accounts: BTreeMap<i32, PartitionAccounts>,
    positions: BTreeMap<i32, i64>,
    last_now: Option<EventTime>,
    next_early: Option<EventTime>,
    next_seq: u64,
    events: Vec<StoredEvent>,
    /// One list of rows per metric, in spec order.
    metrics: Vec<Vec<StoredRow>>,
}

/// A live event as received; restoring decodes it again with the same schema.
#[derive(Serialize, Deserialize)]
struct StoredEvent {
    seq: u64,
    received_at: EventTime,
    /// The payload (it decoded, so it is UTF-8).
    payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pin_until: Option<EventTime>,
}

#[derive(Serialize, Deserialize)]
struct StoredRow {
    window: Window,
    dims: Dimensions,
    /// [`Op::encode`]d.
    log: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_revision: Option<u32>,
    dirty: bool,
}

/// A stable 64-bit FNV-1a hash of the parts of a spec that shape engine state.
pub(crate) fn fingerprint(spec: &ValidSpec) -> u64 {
    let text = format!("{:?}|{:?}|{:?}", spec.metrics(), spec.schema(), spec.spec().time);
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn stored_row(window: Window, dims: &Dimensions, row: &RowState) -> StoredRow {
    StoredRow {
        window,
        dims: dims.clone(),
        log: row.log.iter().map(|op| op.encode()).collect(),
        last_revision: row.last_revision,
        dirty: row.dirty,
    }
}

impl Engine {
    /// The engine's whole state as a blob for [`Engine::restore`].
    pub fn checkpoint(&self) -> Result<Vec<u8>, Error> {
        let mut events: Vec<StoredEvent> = self
            .events
            .iter()
            .map(|(seq, l)| StoredEvent {
                seq,
                received_at: l.received_at,
                payload: String::from_utf8_lossy(&l.payload).into_owned(),
                pin_until: l.pin_until,
            })
            .collect();
        events.sort_unstable_by_key(|e| e.seq);
        let metrics = self
            .states
            .iter()
            .map(|s| {
                let mut rows: Vec<StoredRow> = match s {
                    MetricState::Fixed(f) => f.rows().map(|(w, d, r)| stored_row(w, d, r)).collect(),
                    MetricState::Session(s) => s.rows().map(|(w, d, r)| stored_row(w, d, r)).collect(),
                };
                rows.sort_by(|a, b| (a.window, &a.dims).cmp(&(b.window, &b.dims)));
                rows
            })
            .collect();
        let blob = Blob {
            format: FORMAT,
            spec_fingerprint: self.fingerprint,
            watermarks: self.watermarks.clone(),
            accounts: self.accounts.clone(),
            positions: self.positions.clone(),
            last_now: self.last_now,
            next_early: self.next_early,
            next_seq: self.events.next_seq,
            events,
            metrics,
        };
        serde_json::to_vec(&blob).map_err(Error::CheckpointEncode)
    }

    /// An engine for `spec` in the state a [`Engine::checkpoint`] blob recorded.
    pub fn restore(spec: &ValidSpec, blob: &[u8]) -> Result<Engine, Error> {
        #[derive(Deserialize)]
        struct Header {
            format: u32,
        }
        let header: Header = serde_json::from_slice(blob).map_err(Error::CheckpointDecode)?;
        if header.format != FORMAT {
            return Err(Error::CheckpointFormat { found: header.format, expected: FORMAT });
        }
        let blob: Blob = serde_json::from_slice(blob).map_err(Error::CheckpointDecode)?;
        let mut engine = Engine::new(spec);
        if blob.spec_fingerprint != engine.fingerprint {
            return Err(Error::SpecChanged);
        }
        if blob.metrics.len() != engine.metrics.len() {
            return Err(Error::CheckpointCorrupt(format!(
                "{} metrics in the blob, {} in the spec",
                blob.metrics.len(),
                engine.metrics.len()
            )));
        }
        let mut table = EventTable::default();
        let mut decoded: HashMap<u64, Event> = HashMap::default();
        for e in blob.events {
            let event = engine
                .schema
                .decode(e.payload.as_bytes(), e.received_at)
                .map_err(|err| Error::CheckpointCorrupt(format!("stored event {} no longer decodes: {err}", e.seq)))?;
            table.insert_at(e.seq, &event, e.received_at, e.payload.into_bytes().into_boxed_slice(), 0, e.pin_until);
            decoded.insert(e.seq, event);
        }
        table.next_seq = blob.next_seq;
        let watermark = blob.watermarks.current();
        let mut refs: HashMap<u64, u32> = HashMap::default();
        for ((metric, state), rows) in engine.metrics.iter().zip(&mut engine.states).zip(blob.metrics) {
            for r in rows {
                let log = r
                    .log
                    .iter()
                    .map(|&x| Op::decode(x).ok_or_else(|| Error::CheckpointCorrupt(format!("bad log entry {x}"))))
                    .collect::<Result<Vec<Op>, Error>>()?;
                let acc = RowState::replay(metric, &log, &decoded)?;
                let row = RowState { acc, log, last_revision: r.last_revision, dirty: r.dirty };
                for seq in row.seqs() {
                    *refs.entry(seq).or_default() += 1;
                }
                let step = Step { metric, policy: &engine.policy, watermark, now: EventTime::MIN };
                match state {
                    MetricState::Fixed(f) => f.restore_row(&step, r.window, &r.dims, row),
                    MetricState::Session(s) => {
                        let times: Vec<EventTime> = row.seqs().filter_map(|q| table.get(q).map(|e| e.time)).collect();
                        s.restore_row(&step, r.window, &r.dims, row, times).map_err(Error::CheckpointCorrupt)?;
                    }
                }
            }
        }
        let seqs: Vec<u64> = table.iter().map(|(s, _)| s).collect();
        for seq in seqs {
            table.settle(seq, refs.get(&seq).copied().unwrap_or(0), None, watermark);
        }
        let policy = &engine.policy;
        engine.watermarks = blob.watermarks.with_policy(policy.watermark_delay, policy.idle_timeout);
        engine.events = table;
        engine.accounts = blob.accounts;
        engine.positions = blob.positions;
        engine.last_now = blob.last_now;
        engine.next_early = blob.next_early;
        Ok(engine)
    }
}
