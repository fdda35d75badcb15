//! Key-partitioned intermediate frames, so a run's memory holds one part of its events at a time.
//!
//! A run larger than [`crate::BatchRun::part_events`] splits its events into `parts` parts twice:
//! - by a hash of the event id while reading (`raw/{b}`), so every copy of an id lands in one part and
//!   de-duplication per part keeps exactly the copy a whole-range de-duplication keeps;
//! - per metric, by a hash of the metric's dimension values (`events{i}/{j}`; a session metric's computed
//!   rows wait in `rows{i}/{j}`), so every event of a key lands in one part; every window kind computes
//!   per key, so the union of the parts' rows is the metric's rows.
//!
//! With one part everything stays in memory and nothing is hashed. With more, each put frame is written
//! as an LZ4-compressed Parquet file in a temporary directory that is removed when the [`Spill`] drops
//! (and a taken name's files as soon as they are read back).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use polars::prelude::*;

use crate::error::Error;

/// Where the parts are kept.
enum Place {
    Memory(Mutex<BTreeMap<String, Vec<DataFrame>>>),
    Disk(tempfile::TempDir),
}

/// Named frames split into `parts` parts by key hash. `put` appends, `take` returns everything put under
/// a name (in put order) and forgets it.
pub(crate) struct Spill {
    parts: usize,
    place: Place,
    seq: AtomicU64,
    /// Bytes written to disk (for the report).
    written: AtomicU64,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context: context.into(), source }
}

impl Spill {
    /// `parts` parts; more than one spills to a new temporary directory under `dir` (default: the
    /// system's temporary directory).
    pub fn new(parts: usize, dir: Option<&Path>) -> Result<Self, Error> {
        let parts = parts.max(1);
        let place = if parts == 1 {
            Place::Memory(Mutex::new(BTreeMap::new()))
        } else {
            let mut b = tempfile::Builder::new();
            b.prefix("tidemark-batch-");
            let tmp = match dir {
                Some(d) => b.tempdir_in(d),
                None => b.tempdir(),
            }
            .map_err(io("creating the spill directory"))?;
            Place::Disk(tmp)
        };
        Ok(Spill { parts, place, seq: AtomicU64::new(0), written: AtomicU64::new(0) })
    }

    /// Number of parts.
    pub fn parts(&self) -> usize {
        self.parts
    }

    /// Bytes written to the spill directory so far.
    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn dir_of(root: &Path, name: &str) -> PathBuf {
        root.join(name)
    }

    /// Appends `df` under `name`.
    pub fn put(&self, name: &str, mut df: DataFrame) -> Result<(), Error> {
        if df.height() == 0 {
            return Ok(());
        }
        match &self.place {
            Place::Memory(m) => {
                m.lock()
                    .map_err(|_| Error::Internal("spill lock poisoned".into()))?
                    .entry(name.to_owned())
                    .or_default()
                    .push(df);
            }
            Place::Disk(root) => {
                let dir = Self::dir_of(root.path(), name);
                std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
                let path = dir.join(format!("{:012}.parquet", self.seq.fetch_add(1, Ordering::Relaxed)));
                let file = std::fs::File::create(&path).map_err(io(format!("creating {}", path.display())))?;
                let bytes = ParquetWriter::new(file)
                    .with_compression(ParquetCompression::Lz4Raw)
                    .with_statistics(StatisticsOptions::empty())
                    .finish(&mut df)?;
                self.written.fetch_add(bytes, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Everything put under `name`, as one frame in put order (`None` if nothing was), and forgets it.
    pub fn take(&self, name: &str) -> Result<Option<DataFrame>, Error> {
        let frames = match &self.place {
            Place::Memory(m) => {
                m.lock().map_err(|_| Error::Internal("spill lock poisoned".into()))?.remove(name).unwrap_or_default()
            }
            Place::Disk(root) => {
                let dir = Self::dir_of(root.path(), name);
                let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries
                        .map(|e| e.map(|e| e.path()))
                        .collect::<Result<_, _>>()
                        .map_err(io(format!("listing {}", dir.display())))?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(io(format!("listing {}", dir.display()))(e)),
                };
                files.sort();
                let mut frames = Vec::with_capacity(files.len());
                for path in &files {
                    let file = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
                    frames.push(ParquetReader::new(file).finish()?);
                    std::fs::remove_file(path).map_err(io(format!("removing {}", path.display())))?;
                }
                if !files.is_empty() {
                    std::fs::remove_dir(&dir).map_err(io(format!("removing {}", dir.display())))?;
                }
                frames
            }
        };
        let mut frames = frames.into_iter();
        let Some(mut out) = frames.next() else { return Ok(None) };
        for f in frames {
            out.vstack_mut_owned(f)?;
        }
        out.rechunk_mut();
        Ok(Some(out))
    }

    /// Splits `df` by a hash of the values of `key` (string columns; none: everything is part 0) and
    /// appends part `j` under `{prefix}/{j}`.
    pub fn put_by_key(&self, prefix: &str, df: DataFrame, key: &[&str]) -> Result<(), Error> {
        if self.parts == 1 {
            return self.put(&part_name(prefix, 0), df);
        }
        let part_of = part_ids(&df, key, self.parts)?;
        let mut rows: Vec<Vec<IdxSize>> = vec![Vec::new(); self.parts];
        for (row, &p) in part_of.iter().enumerate() {
            rows[p as usize].push(row as IdxSize);
        }
        for (j, r) in rows.into_iter().enumerate() {
            if r.is_empty() {
                continue;
            }
            let piece = df.take(&IdxCa::from_vec("rows".into(), r))?;
            self.put(&part_name(prefix, j), piece)?;
        }
        Ok(())
    }
}

/// The name of part `j` under `prefix`.
pub(crate) fn part_name(prefix: &str, j: usize) -> String {
    format!("{prefix}/{j}")
}

/// The part of each row: a hash of its values in the `key` columns (nulls hash apart from every string),
/// modulo `parts`. The hasher has fixed keys, so a value lands in the same part wherever it occurs.
fn part_ids(df: &DataFrame, key: &[&str], parts: usize) -> Result<Vec<u32>, Error> {
    let state = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    let mut hashers: Vec<std::collections::hash_map::DefaultHasher> =
        (0..df.height()).map(|_| state.build_hasher()).collect();
    for k in key {
        let column = df.column(k)?.as_materialized_series().str()?.clone();
        for (h, v) in hashers.iter_mut().zip(column.iter()) {
            match v {
                Some(s) => {
                    h.write_u8(1);
                    h.write(s.as_bytes());
                    h.write_u8(0xff);
                }
                None => h.write_u8(0),
            }
        }
    }
    let parts = parts as u64;
    Ok(hashers.into_iter().map(|h| (h.finish() % parts) as u32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ids: &[&str], n: &[i64]) -> DataFrame {
        df!("id" => ids, "n" => n).unwrap()
    }

    fn sorted_ids(df: &DataFrame) -> Vec<String> {
        let mut v: Vec<String> = df
            .column("id")
            .unwrap()
            .as_materialized_series()
            .str()
            .unwrap()
            .iter()
            .map(|s| s.unwrap().to_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn parts_on_disk_hold_every_row_once_and_equal_keys_together() {
        let spill = Spill::new(3, None).unwrap();
        let ids = ["a", "b", "c", "a", "d", "e", "b", "f", "g", "a"];
        spill.put_by_key("raw", frame(&ids[..5], &[0, 1, 2, 3, 4]), &["id"]).unwrap();
        spill.put_by_key("raw", frame(&ids[5..], &[5, 6, 7, 8, 9]), &["id"]).unwrap();
        assert!(spill.bytes_written() > 0);
        let mut all = Vec::new();
        let mut seen_in: BTreeMap<String, usize> = BTreeMap::new();
        for j in 0..3 {
            let Some(part) = spill.take(&part_name("raw", j)).unwrap() else { continue };
            // put order is kept within a part
            let n: Vec<i64> =
                part.column("n").unwrap().as_materialized_series().i64().unwrap().into_no_null_iter().collect();
            assert!(n.windows(2).all(|w| w[0] < w[1]), "{n:?}");
            for id in sorted_ids(&part) {
                assert_eq!(*seen_in.entry(id.clone()).or_insert(j), j, "{id} in two parts");
                all.push(id);
            }
            // taken once
            assert!(spill.take(&part_name("raw", j)).unwrap().is_none());
        }
        all.sort();
        let mut expected: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
        expected.sort();
        assert_eq!(all, expected);
        assert!(
            seen_in.len() == 7 && seen_in.values().any(|&j| j != seen_in["a"]),
            "all keys in one part: {seen_in:?}"
        );
    }

    #[test]
    fn one_part_stays_in_memory_unhashed() {
        let spill = Spill::new(1, None).unwrap();
        spill.put_by_key("m0", frame(&["x", "y"], &[1, 2]), &["id"]).unwrap();
        spill.put_by_key("m0", frame(&["z"], &[3]), &["id"]).unwrap();
        assert_eq!(spill.bytes_written(), 0);
        let got = spill.take(&part_name("m0", 0)).unwrap().unwrap();
        assert_eq!(sorted_ids(&got), ["x", "y", "z"]);
        assert!(spill.take("nothing").unwrap().is_none());
    }

    #[test]
    fn the_spill_directory_is_removed_on_drop() {
        let spill = Spill::new(2, None).unwrap();
        spill.put_by_key("raw", frame(&["a", "b", "c"], &[1, 2, 3]), &["id"]).unwrap();
        let Place::Disk(dir) = &spill.place else { panic!("two parts spill to disk") };
        let path = dir.path().to_owned();
        assert!(path.join("raw").exists());
        drop(spill);
        assert!(!path.exists());
    }
}
