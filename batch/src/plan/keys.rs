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
}
