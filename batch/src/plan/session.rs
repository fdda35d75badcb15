//! Session windows: sort by `(key id, event_time)`, start a new session at the first event of a key and
//! wherever the distance to the previous event of the key is `>= gap`; a session is
//! `[first event, last event + gap)`, as `tidemark_core::window::session::sessions_of`.

use polars::prelude::*;
use tidemark_core::{EventTime, SessionWindows};

use super::keys::{KEY, Packing, group_by_key};
use super::{WINDOW_END, WINDOW_START, time};

const LAST: &str = "__last";

/// The plan of a session metric, grouped by `(window_start, key id)`. `keys` is the number of key ids and
/// `span` the events' (first, last) time: when (key id, time) fits one Int64, the sort and the group-by
/// run on that packed column.
pub(crate) fn plan(
    events: LazyFrame,
    s: SessionWindows,
    mut aggs: Vec<Expr>,
    range: Option<(EventTime, EventTime)>,
    keys: usize,
    span: Option<(i64, i64)>,
) -> LazyFrame {
    let packing = span.and_then(|(first, last)| Packing::new(keys, first, last, 1));
    let gap = s.gap().as_micros();
    let order = SortMultipleOptions::default().with_maintain_order(true);
    let sorted = match packing {
        Some(p) => events.sort_by_exprs([p.pack(time())], order),
        None => events.sort_by_exprs([col(KEY), time()], order),
    };
    let prev = time().shift(lit(1));
    // the first row has no previous row: `prev` is null and `is_null` starts a session
    let starts = prev.clone().is_null().or((time() - prev).gt_eq(lit(gap))).or(col(KEY).neq(col(KEY).shift(lit(1))));
    let session_start = when(starts)
        .then(time())
        .otherwise(lit(NULL).cast(DataType::Int64))
        .fill_null_with_strategy(FillNullStrategy::Forward(None))
        .alias(WINDOW_START);
    aggs.push(time().max().alias(LAST));
    let with_start = sorted.with_column(session_start);
    let mut out = group_by_key(with_start, packing, WINDOW_START, aggs)
        .with_column((col(LAST) + lit(gap)).alias(WINDOW_END))
        .drop(cols([LAST]));
    if let Some((from, to)) = range {
        out = out.filter(col(WINDOW_START).lt(lit(to.as_micros())).and(col(WINDOW_END).gt(lit(from.as_micros()))));
    }
    out
}
