//! Tumbling and hopping windows. An event's last window starts at `t - ((t - offset) mod slide)` (Euclidean
//! remainder, so negative times and offsets align too) and its windows at that minus `k * slide` for `k` in
//! `0..size/slide`, exactly as `tidemark_core::FixedWindows::assign`.
//!
//! - Tumbling: one group-by over the window start.
//!
//! Every kind comes out sorted by window start, so the view's row groups have tight start statistics (a
//! reader of part of a day skips the rest) and readers that go window by window stay local.
//! - Hopping, every aggregate mergeable: aggregate events into slide-long panes with polars, then walk
//!   each key's panes in start order and merge the `size / slide` panes of each window (sums of exact
//!   integer halves, float sums, min of mins, max of maxes, sum of counts): no copies of the events.
//! - Hopping with `count_distinct`: copy each event into its windows (explicit assignment), then group.

use polars::prelude::*;
use tidemark_core::{EventTime, FixedWindows};

use super::keys::{KEY, Packing, group_by_key};
use super::{Aggregation, MergeOp, WINDOW_END, WINDOW_START, time};

/// The plan of a tumbling or hopping metric, grouped by `(window_start, key id)`.
///
/// `keys` is the number of key ids and `span` the events' (first, last) time: when (key id, window index)
/// fits one Int64, the group-bys run on that packed column.
pub(crate) fn plan(
    events: LazyFrame,
    w: &FixedWindows,
    aggs: Aggregation,
    range: Option<(EventTime, EventTime)>,
    keys: usize,
    span: Option<(i64, i64)>,
) -> PolarsResult<LazyFrame> {
    let slide = w.slide().as_micros();
    let size = w.size().as_micros();
    let offset = w.offset().as_micros();
    // ((t - offset) % slide + slide) % slide is the Euclidean remainder whatever `%`'s sign convention
    let phase = ((time() - lit(offset)) % lit(slide) + lit(slide)) % lit(slide);
    let last_start = (time() - phase).alias(WINDOW_START);
    let n = w.windows_per_event() as i64;
    let align = |t: i64| Some(w.last_start(EventTime::from_micros(t)?).as_micros());
    // window starts range from the first event's last window's first start to the last event's last start
    let packing = span
        .and_then(|(first, last)| Packing::new(keys, align(first)?.checked_sub((n - 1) * slide)?, align(last)?, slide));
    // group by (window start, key id), packed into one column when possible
    let group = |lf: LazyFrame, aggs: Vec<Expr>| group_by_key(lf, packing, WINDOW_START, aggs);
    let in_range = |lf: LazyFrame| match range {
        // keep windows overlapping [from, to): start < to and start + size > from
        Some((from, to)) => {
            lf.filter(col(WINDOW_START).lt(lit(to.as_micros())).and(col(WINDOW_START).gt(lit(from.as_micros() - size))))
        }
        None => lf,
    };
    let copies = |lf: LazyFrame| -> LazyFrame {
        let copies: Vec<LazyFrame> =
            (0..n).map(|k| lf.clone().with_column((col(WINDOW_START) - lit(k * slide)).alias(WINDOW_START))).collect();
        if copies.len() == 1 {
            copies.into_iter().next().expect("one copy")
        } else {
            concat(copies, UnionArgs { rechunk: false, parallel: true, ..Default::default() })
                .expect("copies of one frame share a schema")
        }
    };
    let grouped = match aggs.merge {
        Some(merge) if n > 1 => {
            // a pane starting at p feeds the windows starting at p - k * slide: keep a superset of the
            // panes that feed windows in range; the merge keeps exactly the windows in range
            let panes = group(events.with_column(last_start), aggs.over_events);
            let panes = match range {
                Some((from, to)) => panes.filter(
                    col(WINDOW_START)
                        .gt(lit(from.as_micros() - size))
                        .and(col(WINDOW_START).lt(lit(to.as_micros() + size))),
                ),
                None => panes,
            };
            // the merge walks each key's panes in start order, so it runs on the whole collected frame
            let panes = panes.collect_with_engine(Engine::Streaming)?.unwrap_single();
            let window_range = range.map(|(from, to)| (from.as_micros() - size, to.as_micros()));
            let windows = merge_panes(panes, &merge, slide, n, window_range)?;
            // the merge emits key by key; the view is written in window-start order (as the other window
            // kinds come out), so its row groups' start statistics are tight and readers that go window by
            // window (the reconciler's per-start index) stay local
            let by_start = SortMultipleOptions::default().with_maintain_order(true);
            return Ok(windows
                .lazy()
                .sort([WINDOW_START], by_start)
                .with_column((col(WINDOW_START) + lit(size)).alias(WINDOW_END)));
        }
        _ => group(in_range(copies(events.with_column(last_start))), aggs.over_events),
    };
    // the group-by emits in hash order; sorted like the merge's output above
    let by_start = SortMultipleOptions::default().with_maintain_order(true);
    Ok(grouped.sort([WINDOW_START], by_start).with_column((col(WINDOW_START) + lit(size)).alias(WINDOW_END)))
}

/// A column of partial results in pane order (see [`pane_order`]).
enum Partial {
    Int(Vec<i64>, MergeOp),
    Float(Vec<f64>, MergeOp),
}

enum Out {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// The pane rows ordered by key id, then start: a counting sort by the dense key ids, then each key's
/// few rows sorted by start (unique per key: they are the group-by's keys).
fn pane_order(keys: &[u32], starts: &[i64]) -> Vec<u32> {
    let k = keys.iter().max().map_or(0, |m| *m as usize + 1);
    let mut next = vec![0u32; k + 1];
    for &key in keys {
        next[key as usize + 1] += 1;
    }
    for i in 1..=k {
        next[i] += next[i - 1];
    }
    let bounds = next.clone();
    let mut order = vec![0u32; keys.len()];
    for (row, &key) in keys.iter().enumerate() {
        order[next[key as usize] as usize] = row as u32;
        next[key as usize] += 1;
    }
    for w in bounds.windows(2) {
        order[w[0] as usize..w[1] as usize].sort_unstable_by_key(|&r| starts[r as usize]);
    }
    order
}

/// Merges slide-long panes (in any order) into the windows of `n` panes each. Windows without panes are
/// skipped; with a range `(lo, hi)`, only windows with `lo < start < hi` are kept.
fn merge_panes(
    mut df: DataFrame,
    merge: &[(String, MergeOp)],
    slide: i64,
    n: i64,
    range: Option<(i64, i64)>,
) -> PolarsResult<DataFrame> {
    // column by column, so that each column's chunks are freed as it is copied
    df.rechunk_mut();
    polars_ensure!(u32::try_from(df.height()).is_ok(), ComputeError: "{} panes: more than a u32 can index", df.height());
    // partial results never contain nulls (every pane has events; inputs are required fields), so the
    // rechunked columns are plain slices
    let (order, key_ids, starts) = {
        let starts = df.column(WINDOW_START)?.as_materialized_series().i64()?.cont_slice()?;
        let key_ids = df.column(KEY)?.as_materialized_series().u32()?.cont_slice()?;
        let order = pane_order(key_ids, starts);
        let keys: Vec<u32> = order.iter().map(|&r| key_ids[r as usize]).collect();
        let starts: Vec<i64> = order.iter().map(|&r| starts[r as usize]).collect();
        (order, keys, starts)
    };
    // each column gathered once into pane order (the merge then reads it sequentially, each pane up to
    // `n` times), its unordered copy dropped before the next
    let mut partials = Vec::with_capacity(merge.len());
    for (name, op) in merge {
        let c = df.drop_in_place(name)?;
        let s = c.as_materialized_series();
        partials.push(match op {
            MergeOp::SumFloat | MergeOp::MinFloat | MergeOp::MaxFloat => {
                let v = s.f64()?.cont_slice()?;
                Partial::Float(order.iter().map(|&r| v[r as usize]).collect(), *op)
            }
            _ => {
                let v = s.i64()?.cont_slice()?;
                Partial::Int(order.iter().map(|&r| v[r as usize]).collect(), *op)
            }
        });
    }
    drop(df);
    drop(order);
    let mut out_starts: Vec<i64> = Vec::new();
    let mut out_keys: Vec<u32> = Vec::new();
    let mut outs: Vec<Out> = partials
        .iter()
        .map(|p| match p {
            Partial::Int(..) => Out::Int(Vec::new()),
            Partial::Float(..) => Out::Float(Vec::new()),
        })
        .collect();
    // two walks: one counts the windows so that every output column is allocated once, exactly
    let mut windows = 0usize;
    walk_windows(&key_ids, &starts, slide, n, range, |_, _, _, _| windows += 1);
    out_starts.reserve_exact(windows);
    out_keys.reserve_exact(windows);
    for o in &mut outs {
        match o {
            Out::Int(v) => v.reserve_exact(windows),
            Out::Float(v) => v.reserve_exact(windows),
        }
    }
    walk_windows(&key_ids, &starts, slide, n, range, |w, key, first, last| {
        out_starts.push(w);
        out_keys.push(key);
        for (o, p) in outs.iter_mut().zip(&partials) {
            match (o, p) {
                (Out::Int(v), Partial::Int(c, op)) => {
                    let mut xs = c[first..last].iter().copied();
                    let x0 = xs.next().unwrap_or_default();
                    v.push(match op {
                        MergeOp::MinInt => xs.fold(x0, i64::min),
                        MergeOp::MaxInt => xs.fold(x0, i64::max),
                        _ => xs.fold(x0, |a, b| a + b),
                    });
                }
                (Out::Float(v), Partial::Float(c, op)) => {
                    let mut xs = c[first..last].iter().copied();
                    let x0 = xs.next().unwrap_or_default();
                    v.push(match op {
                        MergeOp::MinFloat => xs.fold(x0, f64::min),
                        MergeOp::MaxFloat => xs.fold(x0, f64::max),
                        _ => xs.fold(x0, |a, b| a + b),
                    });
                }
                // both are built from the same `merge` list
                _ => unreachable!("a partial and its output have one type"),
            }
        }
    });
    let mut cols: Vec<Column> = vec![Column::new(WINDOW_START.into(), out_starts), Column::new(KEY.into(), out_keys)];
    for ((name, _), o) in merge.iter().zip(outs) {
        cols.push(match o {
            Out::Int(v) => Column::new(name.as_str().into(), v),
            Out::Float(v) => Column::new(name.as_str().into(), v),
        });
    }
    DataFrame::new(windows, cols)
}

/// Calls `emit(start, key, first, last)` for every window with panes: `first..last` are the positions of
/// its panes in `starts` (sorted by key, then start); with a range `(lo, hi)`, only windows with
/// `lo < start < hi`.
fn walk_windows(
    keys: &[u32],
    starts: &[i64],
    slide: i64,
    n: i64,
    range: Option<(i64, i64)>,
    mut emit: impl FnMut(i64, u32, usize, usize),
) {
    let height = starts.len();
    let size = n * slide;
    let mut seg = 0;
    while seg < height {
        let mut end = seg + 1;
        while end < height && keys[end] == keys[seg] {
            end += 1;
        }
        // positions seg..end: the panes of one key, ascending starts
        let mut first = seg; // first pane with start >= w
        let mut w = starts[seg] - (n - 1) * slide;
        while first < end {
            let mut last = first; // panes first..last are in [w, w + size)
            while last < end && starts[last] < w + size {
                last += 1;
            }
            if last > first && range.is_none_or(|(lo, hi)| w > lo && w < hi) {
                emit(w, keys[seg], first, last);
            }
            // next window start: one slide on, or straight to the next pane's first window
            w += slide;
            while first < end && starts[first] < w {
                first += 1;
            }
            if first < end && starts[first] - (n - 1) * slide > w {
                w = starts[first] - (n - 1) * slide;
            }
        }
        seg = end;
    }
}
