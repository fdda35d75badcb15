//! The file replay source: a JSON Lines file read in arrival order.
//!
//! Each line is one record (a trailing `\r` is stripped; an empty line is a record too, which the
//! engine dead-letters as `empty`). Coordinates: the file's path as source, partition 0, the 0-based line
//! number as offset.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use tidemark_core::{EventTime, SourceCoordinates};

use crate::clock::Clock;
use crate::error::Error;
use crate::output::Record;

/// Where a replayed record's receive time comes from.
#[derive(Debug, Clone)]
pub enum ReceivedAt {
    /// The injected clock's time when the line is read.
    Clock(Arc<dyn Clock>),
    /// A field of the line itself holding the original ingest time (an RFC 3339 string or integer
    /// epoch milliseconds); lines without a readable value get `fallback`'s time.
    Field {
        /// The field name.
        name: String,
        /// The clock for lines without the field.
        fallback: Arc<dyn Clock>,
    },
}

impl ReceivedAt {
    fn of(&self, line: &[u8]) -> EventTime {
        match self {
            ReceivedAt::Clock(c) => c.now(),
            ReceivedAt::Field { name, fallback } => field_time(line, name).unwrap_or_else(|| fallback.now()),
        }
    }
}

pub(crate) fn field_time(line: &[u8], name: &str) -> Option<EventTime> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    match v.get(name)? {
        serde_json::Value::String(s) => EventTime::parse_rfc3339(s),
        serde_json::Value::Number(n) => EventTime::from_millis(n.as_i64()?),
        _ => None,
    }
}

/// Reads a JSON Lines file as [`Record`]s, in file order.
#[derive(Debug)]
pub struct FileReplay {
    source: String,
    reader: BufReader<File>,
    next_offset: i64,
    received_at: ReceivedAt,
    buf: Vec<u8>,
}

impl FileReplay {
    /// Opens `path` to replay from its first line.
    pub fn open(path: impl AsRef<Path>, received_at: ReceivedAt) -> Result<Self, Error> {
        Self::open_at(path, received_at, 0)
    }

    /// Opens `path` to replay from line `offset` (e.g. the position a checkpoint recorded).
    pub fn open_at(path: impl AsRef<Path>, received_at: ReceivedAt, offset: i64) -> Result<Self, Error> {
        let source = path.as_ref().display().to_string();
        let file = File::open(path.as_ref()).map_err(|e| Error::Io { path: source.clone(), source: e })?;
        let mut replay = FileReplay {
            source,
            reader: BufReader::with_capacity(1 << 16, file),
            next_offset: 0,
            received_at,
            buf: Vec::new(),
        };
        while replay.next_offset < offset {
            if !replay.read_line()? {
                break;
            }
            replay.next_offset += 1;
        }
        Ok(replay)
    }

    /// The source name written into coordinates (the path as given).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The offset of the next record.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Reads one line into `buf` without its line end; `false` at end of file.
    fn read_line(&mut self) -> Result<bool, Error> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| Error::Io { path: self.source.clone(), source: e })?;
        if n == 0 {
            return Ok(false);
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        }
        Ok(true)
    }

    /// Reads the next record into `record`, reusing its buffers (no allocation per record); `false` at
    /// the end of the file, leaving `record` unchanged.
    pub fn read_into(&mut self, record: &mut Record) -> Result<bool, Error> {
        if !self.read_line()? {
            return Ok(false);
        }
        std::mem::swap(&mut self.buf, &mut record.payload);
        if record.coords.source != self.source {
            record.coords.source.clone_from(&self.source);
        }
        record.coords.partition = 0;
        record.coords.offset = self.next_offset;
        record.received_at = self.received_at.of(&record.payload);
        self.next_offset += 1;
        Ok(true)
    }

    /// The next record, or `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<Record>, Error> {
        if !self.read_line()? {
            return Ok(None);
        }
        let offset = self.next_offset;
        self.next_offset += 1;
        Ok(Some(Record {
            coords: SourceCoordinates { source: self.source.clone(), partition: 0, offset },
            received_at: self.received_at.of(&self.buf),
            payload: self.buf.clone(),
        }))
    }
}

impl Iterator for FileReplay {
    type Item = Result<Record, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::io::Write;

    fn write(text: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text).unwrap();
        f
    }

    #[test]
    fn lines_become_records_with_line_numbers() {
        let f = write(b"{\"a\":1}\r\n\n{\"a\":2}\n{\"a\":3}");
        let clock = ManualClock::new(EventTime::from_secs(7).unwrap());
        let recs: Vec<Record> =
            FileReplay::open(f.path(), ReceivedAt::Clock(Arc::new(clock))).unwrap().map(Result::unwrap).collect();
        let payloads: Vec<&[u8]> = recs.iter().map(|r| r.payload.as_slice()).collect();
        assert_eq!(payloads, vec![&b"{\"a\":1}"[..], b"", b"{\"a\":2}", b"{\"a\":3}"]);
        assert_eq!(recs.iter().map(|r| r.coords.offset).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert!(recs.iter().all(|r| r.coords.partition == 0 && r.received_at == EventTime::from_secs(7).unwrap()));
        assert_eq!(recs[2].coords.source, f.path().display().to_string());
    }

    #[test]
    fn read_into_reuses_one_record() {
        let f = write(b"first\nsecond line\n");
        let clock = Arc::new(ManualClock::new(EventTime::from_secs(3).unwrap()));
        let mut r = FileReplay::open(f.path(), ReceivedAt::Clock(clock)).unwrap();
        let mut rec = Record {
            coords: SourceCoordinates { source: String::new(), partition: 9, offset: -1 },
            received_at: EventTime::UNIX_EPOCH,
            payload: Vec::new(),
        };
        assert!(r.read_into(&mut rec).unwrap());
        assert_eq!((rec.payload.as_slice(), rec.coords.offset, rec.coords.partition), (&b"first"[..], 0, 0));
        assert!(r.read_into(&mut rec).unwrap());
        assert_eq!((rec.payload.as_slice(), rec.coords.offset), (&b"second line"[..], 1));
        assert_eq!((rec.coords.source.as_str(), rec.received_at), (r.source(), EventTime::from_secs(3).unwrap()));
        assert!(!r.read_into(&mut rec).unwrap());
        assert_eq!(rec.coords.offset, 1);
    }

    #[test]
    fn resumes_at_an_offset() {
        let f = write(b"a\nb\nc\n");
        let clock = Arc::new(ManualClock::new(EventTime::UNIX_EPOCH));
        let mut r = FileReplay::open_at(f.path(), ReceivedAt::Clock(clock), 2).unwrap();
        let rec = r.next_record().unwrap().unwrap();
        assert_eq!((rec.payload.as_slice(), rec.coords.offset), (&b"c"[..], 2));
        assert!(r.next_record().unwrap().is_none());
    }

    #[test]
    fn ingest_time_from_a_field_or_the_fallback_clock() {
        let f = write(b"{\"ingest\":\"2026-11-24T08:00:00Z\"}\n{\"ingest\":1000}\n{}\nnot json\n");
        let clock = Arc::new(ManualClock::new(EventTime::from_secs(99).unwrap()));
        let at = ReceivedAt::Field { name: "ingest".into(), fallback: clock };
        let times: Vec<EventTime> = FileReplay::open(f.path(), at).unwrap().map(|r| r.unwrap().received_at).collect();
        assert_eq!(
            times,
            vec![
                EventTime::parse_rfc3339("2026-11-24T08:00:00Z").unwrap(),
                EventTime::from_secs(1).unwrap(),
                EventTime::from_secs(99).unwrap(),
                EventTime::from_secs(99).unwrap()
            ]
        );
    }

    #[test]
    fn a_missing_file_is_an_external_retryable_error() {
        let err = FileReplay::open(
            "/nonexistent/x.jsonl",
            ReceivedAt::Clock(Arc::new(ManualClock::new(EventTime::UNIX_EPOCH))),
        )
        .unwrap_err();
        assert_eq!(err.actor(), tidemark_core::Actor::External);
        assert!(err.retryable());
        assert!(err.to_string().contains("/nonexistent/x.jsonl"), "{err}");
    }
}
