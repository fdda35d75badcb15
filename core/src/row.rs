//! The result schema shared by both layers and the serving store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::AggValue;
use crate::dims::Dimensions;
use crate::time::EventTime;
use crate::window::Window;

/// Which layer computed a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The stream service: provisional.
    Speed,
    /// The batch layer (or a reconciler correction from it): authoritative.
    Batch,
}

/// Which firing of a window produced a speed-layer row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pane {
    /// Before the watermark passed the window end.
    Early,
    /// When the watermark passed the window end.
    OnTime,
    /// After that, because of a late event within allowed lateness.
    Late,
}

/// The identity of a row: equal keys from both layers denote the same metric value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RowKey {
    /// Metric name from the spec.
    pub metric: String,
    /// The window.
    pub window: Window,
    /// Dimension values.
    pub dims: Dimensions,
}

/// Where a row came from. The serving store orders rows of one key by it: batch beats speed; among speed
/// rows the higher revision wins; among batch rows the newer epoch wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum Origin {
    /// A speed-layer firing.
    Speed {
        /// 0 for the first emission of the key, +1 for each later one.
        revision: u32,
        /// Which firing.
        pane: Pane,
        /// The operator watermark when the row was emitted.
        watermark: EventTime,
    },
    /// A batch-layer result.
    Batch {
        /// The batch run that computed it.
        run_id: String,
        /// Orders batch runs: a later run has a larger epoch.
        epoch: i64,
    },
}

impl Origin {
    /// The layer.
    pub fn layer(&self) -> Layer {
        match self {
            Origin::Speed { .. } => Layer::Speed,
            Origin::Batch { .. } => Layer::Batch,
        }
    }

    /// Whether a row of this origin may replace a stored row of origin `current` for the same key.
    pub fn supersedes(&self, current: &Origin) -> bool {
        match (self, current) {
            (Origin::Speed { revision: a, .. }, Origin::Speed { revision: b, .. }) => a > b,
            (Origin::Speed { .. }, Origin::Batch { .. }) => false,
            (Origin::Batch { .. }, Origin::Speed { .. }) => true,
            (Origin::Batch { epoch: a, .. }, Origin::Batch { epoch: b, .. }) => a >= b,
        }
    }
}

/// One metric value for one window and one combination of dimension values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    /// Identity.
    pub key: RowKey,
    /// Aggregate name -> value.
    pub values: BTreeMap<String, AggValue>,
    /// Number of events the row aggregates.
    pub events: u64,
    /// Provenance.
    pub origin: Origin,
    /// Processing time at which the row was computed.
    pub computed_at: EventTime,
}

/// A change a layer asks the serving store to make (after Arroyo's `UpdatingData`). The store applies it
/// subject to precedence ([`Origin::supersedes`]), so a replayed or stale change is harmless.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum RowChange {
    /// Insert the row, or replace the stored row of the same key if `row.origin` supersedes it.
    Upsert(MetricRow),
    /// Remove the speed-layer row of `key` (e.g. a session window that a merge superseded), if the stored
    /// row is a speed row with `revision <= revision`. Never removes a batch row.
    Retract {
        /// The row to remove.
        key: RowKey,
        /// The revision the retraction answers; later speed revisions of the key survive it.
        revision: u32,
    },
    /// A late-firing correction under `late_policy = "append"`: only the late events' contribution,
    /// recorded beside the row (idempotent per key and revision); the row itself is left unchanged.
    Delta(MetricRow),
}

impl RowChange {
    /// The key the change is about.
    pub fn key(&self) -> &RowKey {
        match self {
            RowChange::Upsert(r) | RowChange::Delta(r) => &r.key,
            RowChange::Retract { key, .. } => key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speed(revision: u32) -> Origin {
        Origin::Speed { revision, pane: Pane::OnTime, watermark: EventTime::UNIX_EPOCH }
    }

    fn batch(epoch: i64) -> Origin {
        Origin::Batch { run_id: format!("run-{epoch}"), epoch }
    }

    #[test]
    fn precedence() {
        assert!(speed(2).supersedes(&speed(1)));
        assert!(!speed(1).supersedes(&speed(1)));
        assert!(!speed(1).supersedes(&speed(2)));
        assert!(!speed(99).supersedes(&batch(1)));
        assert!(batch(1).supersedes(&speed(99)));
        assert!(batch(2).supersedes(&batch(1)));
        assert!(batch(2).supersedes(&batch(2)), "re-applying the same batch is idempotent");
        assert!(!batch(1).supersedes(&batch(2)));
    }

    #[test]
    fn rows_serialize_with_canonical_keys() {
        let row = MetricRow {
            key: RowKey {
                metric: "views".into(),
                window: Window::new(EventTime::from_secs(0).unwrap(), EventTime::from_secs(60).unwrap()).unwrap(),
                dims: Dimensions::new([("page".into(), "/x".into())]),
            },
            values: BTreeMap::from([("n".into(), AggValue::Int(3)), ("avg".into(), AggValue::Float(1.5))]),
            events: 3,
            origin: speed(0),
            computed_at: EventTime::from_secs(61).unwrap(),
        };
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(
            json,
            r#"{"key":{"metric":"views","window":{"start":"1970-01-01T00:00:00Z","end":"1970-01-01T00:01:00Z"},"dims":"page=/x"},"values":{"avg":1.5,"n":3},"events":3,"origin":{"layer":"speed","revision":0,"pane":"on_time","watermark":"1970-01-01T00:00:00Z"},"computed_at":"1970-01-01T00:01:01Z"}"#
        );
        let back: MetricRow = serde_json::from_str(&json).unwrap();
        assert_eq!(back, row);
    }
}
