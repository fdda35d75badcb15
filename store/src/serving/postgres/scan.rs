//! Columnar range scans of the Postgres store ([`ServingStore::scan_rows`](crate::ServingStore::scan_rows),
//! [`ServingStore::scan_emissions`](crate::ServingStore::scan_emissions)): each scan has a connection of its
//! own (scans of several parts of a range run at once, as the reconciler's do), a metric's range is read in
//! slices of window start, one query each (no sort: a scan's order is free), times in binary, and each slice
//! becomes one chunk without the per-row decoding of [`ServingStore::read_range`](crate::ServingStore::read_range)
//! (dimensions stay in their stored canonical text; aggregate values are re-encoded to the one canonical
//! JSON text both stores compare).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::{StreamExt as _, TryStreamExt as _};
use tidemark_core::{AggValue, EventTime, Layer};
use tokio_postgres::Client;

use super::PostgresStore;
use super::codec::{PgTime, pg_clamp, ts};
use crate::error::{Error, Result};
use crate::flat::{self, Flat, Kind};
use crate::scan::{Chunks, EmissionChunk, RowChunk};
use crate::serving::SCAN_SLICE;
use crate::serving::delta::schema::to_batch;

/// The aggregate values' JSON text as tidemark encodes it (keys in byte order, no spaces), from the text
/// Postgres prints for a `jsonb`.
fn canonical_values(text: &str) -> Result<String> {
    let values: BTreeMap<String, AggValue> =
        serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("stored aggregate values: {e}")))?;
    serde_json::to_string(&values).map_err(|e| Error::Corrupt(format!("aggregate values: {e}")))
}

impl PostgresStore {
    /// `read` of each 15-minute slice of `[from, to)` for `metric`, in order, on a connection of the scan's own
    /// (closed when the stream is dropped).
    pub(super) fn sliced<'a, T, F, Fut>(
        &'a self,
        metric: &str,
        from: EventTime,
        to: EventTime,
        read: F,
    ) -> Chunks<'a, T>
    where
        T: Send + 'a,
        F: Fn(Arc<Client>, String, EventTime, EventTime) -> Fut + Send + Sync + 'a,
        Fut: Future<Output = Result<T>> + Send + 'a,
    {
        let metric = metric.to_owned();
        let read = Arc::new(read);
        futures::stream::once(self.new_connection())
            .map_ok(move |client| {
                let (client, metric, read) = (Arc::new(client), metric.clone(), read.clone());
                futures::stream::iter(crate::scan::slices(from, to, SCAN_SLICE))
                    .then(move |(a, b)| read(client.clone(), metric.clone(), a, b))
            })
            .try_flatten()
            .boxed()
    }

    /// The current rows (no tombstones) of `metric` whose window starts in `[from, to)`, as one chunk.
    pub(super) async fn rows_chunk(
        &self,
        client: &Client,
        metric: &str,
        from: EventTime,
        to: EventTime,
    ) -> Result<RowChunk> {
        let sql = format!(
            "SELECT window_start, window_end, dims, agg_values::text, events, layer, revision, pane, watermark,
                 batch_run_id, batch_epoch, computed_at
             FROM {{s}}.serving_rows
             WHERE metric = $3 AND window_start >= {from} AND window_start < {to} AND NOT deleted",
            from = ts("$1::bigint"),
            to = ts("$2::bigint"),
        );
        let rows = client
            .query(&self.sql(&sql), &[&pg_clamp(from), &pg_clamp(to), &metric])
            .await
            .map_err(Error::pg("scanning rows"))?;
        let time = |t: PgTime| t.0;
        let mut flats = Vec::with_capacity(rows.len());
        for r in &rows {
            let layer: &str = r.get(5);
            let pane: Option<&str> = r.get(7);
            flats.push(Flat {
                metric: metric.to_owned(),
                window_start: time(r.get(0)),
                window_end: time(r.get(1)),
                dims: r.get(2),
                kind: Kind::Row,
                values_json: canonical_values(r.get(3))?,
                events: r.get(4),
                layer: flat::parse_layer(layer).ok_or_else(|| Error::Corrupt(format!("layer {layer:?}")))?,
                revision: r.get(6),
                pane: pane.and_then(flat::parse_pane).map(flat::pane_str),
                watermark: r.get::<_, Option<PgTime>>(8).map(time),
                batch_run_id: r.get(9),
                batch_epoch: r.get(10),
                computed_at: time(r.get(11)),
                deleted: false,
            });
        }
        RowChunk::serving(to_batch(&flats, 0, false)?)
    }

    /// The emission-log records of `metric` whose window starts in `[from, to)`, as one chunk.
    pub(super) async fn emissions_chunk(
        &self,
        client: &Client,
        metric: &str,
        from: EventTime,
        to: EventTime,
    ) -> Result<EmissionChunk> {
        let sql = format!(
            "SELECT window_start, window_end, dims, revision, delta, agg_values::text, events, pane, watermark,
                 writer_epoch, emitted_at
             FROM {{s}}.emissions
             WHERE metric = $3 AND window_start >= {from} AND window_start < {to}",
            from = ts("$1::bigint"),
            to = ts("$2::bigint"),
        );
        let rows = client
            .query(&self.sql(&sql), &[&pg_clamp(from), &pg_clamp(to), &metric])
            .await
            .map_err(Error::pg("scanning emissions"))?;
        let time = |t: PgTime| t.0;
        let mut flats = Vec::with_capacity(rows.len());
        for r in &rows {
            let revision: i64 = r.get(3);
            let pane: &str = r.get(7);
            flats.push(Flat {
                metric: metric.to_owned(),
                window_start: time(r.get(0)),
                window_end: time(r.get(1)),
                dims: r.get(2),
                kind: Kind::Emission {
                    revision: u32::try_from(revision).map_err(|_| Error::Corrupt("emission revision".into()))?,
                    delta: r.get(4),
                },
                values_json: canonical_values(r.get(5))?,
                events: r.get(6),
                layer: Layer::Speed,
                revision: Some(revision),
                pane: flat::parse_pane(pane).map(flat::pane_str),
                watermark: r.get::<_, Option<PgTime>>(8).map(time),
                batch_run_id: None,
                batch_epoch: Some(r.get(9)),
                computed_at: time(r.get(10)),
                deleted: false,
            });
        }
        EmissionChunk::serving(&to_batch(&flats, 0, false)?)
    }
}
