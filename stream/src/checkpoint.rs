//! Engine checkpoints: the whole engine state as one binary blob ([postcard], a compact serde format).
//!
//! The blob holds the watermark tracker, accounting, source positions, the de-duplication set (event ids
//! by the watermark at which they expire) and every row with its accumulators as they are (session rows
//! also list the ids of their events). It starts with the format version, so a blob of another format is
//! refused before anything else is read (format 1 blobs were JSON and start with `{`).
//! It also holds a fingerprint of the spec's metrics, event schema and time policy: a blob is only
//! restored into an engine for the same definitions ([`Error::SpecChanged`] otherwise).
//! Equal engine states give equal blobs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tidemark_core::{Dimensions, EventTime, ValidSpec, Window};

use crate::engine::{Engine, MetricState, PartitionAccounts};
use crate::error::Error;
use crate::state::{EventId, RowState, SeenIds};
use crate::watermark::WatermarkTracker;
use crate::window_state::Step;
use crate::window_state::session::SessionRow;

/// The checkpoint format this build writes (1: JSON with event payloads and row logs; 2: postcard with
/// accumulators and event ids; 3: 2 plus the watermark tracker's suspects). Formats 2 and 3 are read.
pub const FORMAT: u32 = 3;

/// The tracker as format 2 stored it (no suspects).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct LegacyTracker {
    partitions: BTreeMap<i32, LegacyPartition>,
    current: Option<EventTime>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct LegacyPartition {
    max_event: Option<EventTime>,
    last_active: EventTime,
}

/// The blob. Written from borrowed parts (`Blob<StoredRow<&..>, &[EventId]>`), read as owned ones;
/// both serialize alike.
#[derive(Serialize, Deserialize)]
struct Blob<R, I, W = WatermarkTracker> {
    format: u32,
    spec_fingerprint: u64,
    watermarks: W,
    accounts: BTreeMap<i32, PartitionAccounts>,
    positions: BTreeMap<i32, i64>,
    last_now: Option<EventTime>,
    next_early: Option<EventTime>,
    /// Remembered ids by the watermark at which they expire (ids only session rows hold are listed with
    /// their rows).
    expiring: Vec<(EventTime, I)>,
    /// One list of rows per metric, in spec order, sorted by window and dimensions.
    metrics: Vec<Vec<R>>,
}

#[derive(Serialize, Deserialize)]
struct StoredRow<D, R, I> {
    window: Window,
    dims: D,
    row: R,
    /// The ids of the events a session row holds (empty for fixed windows).
    members: I,
}

type OwnedBlob<W = WatermarkTracker> = Blob<StoredRow<Dimensions, RowState, Vec<EventId>>, Vec<EventId>, W>;

/// A stable 64-bit FNV-1a hash of the parts of a spec that shape engine state. The suspect settings of
/// `[time]` are left out (they shape no stored state: a change applies from the next event), so blobs
/// written before they existed still restore.
pub(crate) fn fingerprint(spec: &ValidSpec) -> u64 {
    /// `TimePolicy` as it was when format 2 was defined; its `Debug` text is part of the hash.
    #[derive(Debug)]
    #[allow(dead_code, reason = "read through Debug only")]
    struct TimePolicy<'a> {
        watermark_delay: tidemark_core::Duration,
        allowed_lateness: tidemark_core::Duration,
        idle_timeout: tidemark_core::Duration,
        late_policy: &'a tidemark_core::LatePolicy,
        max_future_skew: tidemark_core::Duration,
        early_firing: Option<tidemark_core::Duration>,
    }
    let t = &spec.spec().time;
    let time = TimePolicy {
        watermark_delay: t.watermark_delay,
        allowed_lateness: t.allowed_lateness,
        idle_timeout: t.idle_timeout,
        late_policy: &t.late_policy,
        max_future_skew: t.max_future_skew,
        early_firing: t.early_firing,
    };
    let text = format!("{:?}|{:?}|{:?}", spec.metrics(), spec.schema(), time);
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The errors this module can return carry serde_json errors; postcard's are converted by message.
fn decode_error(e: impl std::fmt::Display) -> Error {
    Error::CheckpointDecode(serde::de::Error::custom(e))
}

/// The format version a blob starts with.
fn format_of(blob: &[u8]) -> Result<u32, Error> {
    if blob.first() == Some(&b'{') {
        // format 1 was JSON
        #[derive(Deserialize)]
        struct Header {
            format: u32,
        }
        let header: Header = serde_json::from_slice(blob).map_err(Error::CheckpointDecode)?;
        return Ok(header.format);
    }
    postcard::take_from_bytes::<u32>(blob).map(|(format, _)| format).map_err(decode_error)
}

impl Engine {
    /// The engine's whole state as a blob for [`Engine::restore`].
    pub fn checkpoint(&self) -> Result<Vec<u8>, Error> {
        let expiring = self.seen.expiring().collect();
        let metrics = self
            .states
            .iter()
            .map(|s| {
                let mut rows: Vec<StoredRow<&Dimensions, &RowState, &[EventId]>> = match s {
                    MetricState::Fixed(f) => {
                        f.rows().map(|(window, dims, row)| StoredRow { window, dims, row, members: &[][..] }).collect()
                    }
                    MetricState::Session(s) => s
                        .rows()
                        .map(|(window, dims, s)| StoredRow { window, dims, row: &s.row, members: &s.members[..] })
                        .collect(),
                };
                rows.sort_unstable_by(|a, b| (a.window, a.dims).cmp(&(b.window, b.dims)));
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
            expiring,
            metrics,
        };
        postcard::to_stdvec(&blob).map_err(|e| Error::CheckpointEncode(serde::ser::Error::custom(e)))
    }

    /// An engine for `spec` in the state a [`Engine::checkpoint`] blob recorded.
    pub fn restore(spec: &ValidSpec, blob: &[u8]) -> Result<Engine, Error> {
        let blob: OwnedBlob = match format_of(blob)? {
            FORMAT => postcard::from_bytes(blob).map_err(decode_error)?,
            2 => {
                let b: OwnedBlob<LegacyTracker> = postcard::from_bytes(blob).map_err(decode_error)?;
                let partitions =
                    b.watermarks.partitions.into_iter().map(|(id, p)| (id, (p.max_event, p.last_active))).collect();
                Blob {
                    format: FORMAT,
                    spec_fingerprint: b.spec_fingerprint,
                    watermarks: WatermarkTracker::from_legacy(partitions, b.watermarks.current),
                    accounts: b.accounts,
                    positions: b.positions,
                    last_now: b.last_now,
                    next_early: b.next_early,
                    expiring: b.expiring,
                    metrics: b.metrics,
                }
            }
            format => return Err(Error::CheckpointFormat { found: format, expected: FORMAT }),
        };
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
        let watermark = blob.watermarks.current();
        let mut seen = SeenIds::default();
        for (until, ids) in &blob.expiring {
            if watermark.is_some_and(|wm| *until <= wm) {
                return Err(Error::CheckpointCorrupt(format!("ids kept until {until}, behind the watermark")));
            }
            for id in ids {
                if seen.contains(id) {
                    return Err(Error::CheckpointCorrupt(format!("event id {id:?} is listed twice")));
                }
                seen.remember(id, Some(*until), 0);
            }
        }
        for ((metric, state), rows) in engine.metrics.iter().zip(&mut engine.states).zip(blob.metrics) {
            let step = Step { metric, policy: &engine.policy, watermark, now: EventTime::MIN };
            for StoredRow { window, dims, row, members } in rows {
                if !row.acc.computes(metric.aggregates.iter().map(|a| a.function)) {
                    return Err(Error::CheckpointCorrupt(format!(
                        "a row of metric {} has accumulators of other aggregates",
                        metric.name
                    )));
                }
                match state {
                    MetricState::Fixed(f) => {
                        if !members.is_empty() {
                            return Err(Error::CheckpointCorrupt("a fixed-window row lists event ids".into()));
                        }
                        f.restore_row(&step, window, &dims, row);
                    }
                    MetricState::Session(s) => {
                        for id in &members {
                            seen.hold(id);
                        }
                        s.restore_row(&step, window, &dims, SessionRow { row, members })
                            .map_err(Error::CheckpointCorrupt)?;
                    }
                }
            }
        }
        let policy = &engine.policy;
        engine.watermarks = blob.watermarks.with_policy(
            policy.watermark_delay,
            policy.idle_timeout,
            crate::engine::suspect_policy(policy),
        );
        engine.seen = seen;
        engine.accounts = blob.accounts;
        engine.positions = blob.positions;
        engine.last_now = blob.last_now;
        engine.next_early = blob.next_early;
        Ok(engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{Output, Record};
    use tidemark_core::{PipelineSpec, SourceCoordinates};

    /// A blob of format 2 (written before suspects existed) restores into the same state.
    #[test]
    fn a_format_2_blob_restores() {
        let text = r#"version = 1
name = "t"
[source]
type = "file"
path = "/tmp/e.jsonl"
[event]
id = "id"
time = { field = "ts", format = "epoch_s" }
dimensions = ["k"]
[[metrics]]
name = "m"
dimensions = ["k"]
window = { type = "tumbling", size = "60s" }
aggregates = [{ name = "n", fn = "count" }]
[stores]
raw_archive = "memory://raw"
serving = "memory://serving"
dead_letter = "memory://dl"
batch_view = "memory://batch"
"#;
        let spec = PipelineSpec::parse(text, "t.toml", None).unwrap();
        let mut engine = Engine::new(&spec);
        let mut out = Output::default();
        for (o, ts) in [(0, 100), (1, 130), (2, 170)] {
            let rec = Record {
                coords: SourceCoordinates { source: "t".into(), partition: 0, offset: o },
                received_at: EventTime::from_secs(10_000).unwrap(),
                payload: format!(r#"{{"id":"e{o}","ts":{ts},"k":"a"}}"#).into_bytes(),
            };
            engine.process(&rec, EventTime::from_secs(ts).unwrap(), &mut out);
        }
        let current: OwnedBlob = postcard::from_bytes(&engine.checkpoint().unwrap()).unwrap();
        let legacy = Blob {
            format: 2,
            spec_fingerprint: current.spec_fingerprint,
            watermarks: LegacyTracker {
                partitions: BTreeMap::from([(
                    0,
                    LegacyPartition {
                        max_event: EventTime::from_secs(170),
                        last_active: EventTime::from_secs(170).unwrap(),
                    },
                )]),
                current: engine.watermark(),
            },
            accounts: current.accounts,
            positions: current.positions,
            last_now: current.last_now,
            next_early: current.next_early,
            expiring: current.expiring,
            metrics: current.metrics,
        };
        let blob = postcard::to_stdvec(&legacy).unwrap();
        let restored = Engine::restore(&spec, &blob).unwrap();
        assert_eq!(restored.watermark(), Some(EventTime::from_secs(165).unwrap()));
        assert_eq!(restored.accounts(), engine.accounts());
        assert_eq!(restored.live_rows(), engine.live_rows());
        assert_eq!(restored.checkpoint().unwrap(), engine.checkpoint().unwrap(), "the same state, written as format 3");
    }
}
