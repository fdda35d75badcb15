//! A metric's dimension values interned to dense `u32` key ids, so that window assignment, sorting and
//! grouping run on one integer column instead of strings; the strings come back once per output row from
//! a dictionary of one row per key.

use polars::prelude::*;

/// Column: the key id of a row (UInt32, `0..keys`).
pub(crate) const KEY: &str = "__key";

/// The events a metric needs, with their key ids, and the dictionary that turns ids back into values.
pub(crate) struct Interned {
    /// `event_time`, [`KEY`] and the aggregates' input columns.
    pub work: DataFrame,
    /// The metric's dimension columns, one row per key id (row `i` holds key `i`'s values).
    pub dictionary: DataFrame,
}

/// Interns the combination of `dims` (string columns of `events`) of every row and keeps only `keep` (the
/// time and the aggregates' inputs) beside the ids. A metric without dimensions has one key, `0`.
pub(crate) fn intern(events: &DataFrame, dims: &[String], keep: &[String]) -> PolarsResult<Interned> {
    let n = events.height();
    polars_ensure!(
        u32::try_from(n).is_ok(),
        ComputeError: "{n} events in one range: more than a key id can count (use --chunk)"
    );
    let mut ids: Vec<u32> = vec![0; n];
    // a row of each key: with no dimensions, every row is key 0
    let mut first_rows: Vec<IdxSize> = if n > 0 { vec![0] } else { Vec::new() };
    for d in dims {
        let column = events.column(d)?.as_materialized_series().str()?.clone();
        // (key so far, value) -> key including this dimension
        let mut map: PlHashMap<(u32, Option<&str>), u32> = PlHashMap::with_capacity(first_rows.len().max(16));
        let mut firsts: Vec<IdxSize> = Vec::with_capacity(first_rows.len());
        for (row, (id, value)) in ids.iter_mut().zip(column.iter()).enumerate() {
            let next = firsts.len() as u32;
            *id = *map.entry((*id, value)).or_insert_with(|| {
                firsts.push(row as IdxSize);
                next
            });
        }
        first_rows = firsts;
    }
    let mut columns: Vec<Column> = Vec::with_capacity(keep.len() + 1);
    for k in keep {
        columns.push(events.column(k)?.clone());
    }
    columns.push(Column::new(KEY.into(), ids));
    let work = DataFrame::new(n, columns)?;
    let rows = IdxCa::from_vec("rows".into(), first_rows);
    let dictionary = events.select(dims.iter().map(String::as_str))?.take(&rows)?;
    Ok(Interned { work, dictionary })
}

/// Column: a packed (key id, slot) group key, see [`Packing`].
pub(crate) const PACKED: &str = "__packed";

/// One Int64 group key standing for (key id, slot) where a slot is a time on a grid
/// (`base + slot * step`): `packed = key * slots + slot`. Grouping and sorting one integer column is much
/// cheaper than two (polars row-encodes multi-column keys). `None` when the product would not fit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packing {
    base: i64,
    step: i64,
    slots: i64,
}

impl Packing {
    /// A packing for `keys` key ids and grid times `base ..= last` in steps of `step`.
    pub fn new(keys: usize, base: i64, last: i64, step: i64) -> Option<Packing> {
        let width = last.checked_sub(base)?;
        if step <= 0 || width < 0 || width % step != 0 {
            return None;
        }
        let slots = (width / step).checked_add(1)?;
        let keys = i64::try_from(keys).ok()?.max(1);
        keys.checked_mul(slots).is_some().then_some(Packing { base, step, slots })
    }

    /// The packed key of the key id column and a grid time expression.
    pub fn pack(&self, time: Expr) -> Expr {
        // every operand is non-negative here: floor division and `%` need no sign care
        col(KEY).cast(DataType::Int64) * lit(self.slots) + (time - lit(self.base)).floor_div(lit(self.step))
    }

    /// The [`KEY`] and `time_name` columns back from [`PACKED`].
    pub fn unpack(&self, time_name: &str) -> [Expr; 2] {
        [
            col(PACKED).floor_div(lit(self.slots)).cast(DataType::UInt32).alias(KEY),
            (lit(self.base) + (col(PACKED) % lit(self.slots)) * lit(self.step)).alias(time_name),
        ]
    }
}

/// Groups `lf` by (`start`, key id), on the packed column when there is a packing.
pub(crate) fn group_by_key(lf: LazyFrame, packing: Option<Packing>, start: &str, aggs: Vec<Expr>) -> LazyFrame {
    match packing {
        Some(p) => lf
            .with_column(p.pack(col(start)).alias(PACKED))
            .group_by([col(PACKED)])
            .agg(aggs)
            .with_columns(p.unpack(start))
            .drop(cols([PACKED])),
        None => lf.group_by([col(start), col(KEY)]).agg(aggs),
    }
}

/// Replaces the [`KEY`] column of a result frame with the dimension columns the ids stand for.
pub(crate) fn restore(result: DataFrame, dictionary: &DataFrame) -> PolarsResult<DataFrame> {
    let ids = result.column(KEY)?.as_materialized_series().u32()?.clone();
    let values = dictionary.take(&ids)?;
    let mut out = result.drop(KEY)?;
    for c in values.columns() {
        out.with_column(c.clone())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_combinations_share_an_id_and_the_dictionary_gives_them_back() {
        let events = df!(
            "dim0" => ["a", "b", "a", "a", "b"],
            "dim1" => [Some("x"), Some("x"), Some("y"), Some("x"), None],
            "event_time" => [1i64, 2, 3, 4, 5],
        )
        .expect("frame");
        let dims = ["dim0".to_owned(), "dim1".to_owned()];
        let i = intern(&events, &dims, &["event_time".to_owned()]).expect("intern");
        let ids: Vec<u32> = i.work.column(KEY).unwrap().u32().unwrap().into_no_null_iter().collect();
        assert_eq!(ids, vec![0, 1, 2, 0, 3]);
        assert_eq!(i.dictionary.height(), 4);
        let back = restore(i.work.clone(), &i.dictionary).expect("restore");
        assert!(back.column("dim0").unwrap().equals(events.column("dim0").unwrap()));
        assert!(back.column("dim1").unwrap().equals_missing(events.column("dim1").unwrap()));
        assert!(back.column("event_time").unwrap().equals(events.column("event_time").unwrap()));
    }

    #[test]
    fn no_dimensions_is_one_key_and_no_events_none() {
        let events = df!("event_time" => [7i64, 8]).expect("frame");
        let i = intern(&events, &[], &["event_time".to_owned()]).expect("intern");
        let ids: Vec<u32> = i.work.column(KEY).unwrap().u32().unwrap().into_no_null_iter().collect();
        assert_eq!(ids, vec![0, 0]);
        assert_eq!(i.dictionary.height(), 1);
        let empty = intern(&events.head(Some(0)), &[], &["event_time".to_owned()]).expect("intern");
        assert_eq!(empty.work.height(), 0);
        assert_eq!(empty.dictionary.height(), 0);
    }

    #[test]
    fn packing_round_trips_and_refuses_what_does_not_fit() {
        let p = Packing::new(3, 100, 400, 100).expect("3 keys x 4 slots fit");
        let frame = df!(KEY => [0u32, 2, 1, 2], "t" => [100i64, 400, 200, 100]).expect("frame");
        let packed = frame.clone().lazy().with_column(p.pack(col("t")).alias(PACKED)).collect().expect("pack");
        let values: Vec<i64> = packed.column(PACKED).unwrap().i64().unwrap().into_no_null_iter().collect();
        assert_eq!(values, vec![0, 11, 5, 8], "key * 4 + slot: ordered by key, then time");
        let back = packed.lazy().drop(cols([KEY, "t"])).with_columns(p.unpack("t")).collect().expect("unpack");
        assert!(back.column(KEY).unwrap().equals(frame.column(KEY).unwrap()));
        assert!(back.column("t").unwrap().equals(frame.column("t").unwrap()));
        assert!(Packing::new(10_000, 0, 253_402_300_799_999_999, 1).is_none(), "10k keys x 1 µs over 10,000 years");
        assert!(Packing::new(2, 0, 150, 100).is_none(), "the last time is not on the grid");
        assert!(Packing::new(2, 5, 0, 1).is_none(), "empty span");
    }
}
