//! A JSON Lines file replayed in arrival order as one partition (partition 0, line numbers as offsets).

use std::path::PathBuf;
use std::time::Duration;

use crate::Error;
use crate::output::Record;
use crate::source::replay::{FileReplay, ReceivedAt};
use crate::source::{Assignment, Offsets, Polled, Source};

/// A [`FileReplay`] as a [`Source`]: assigned partition 0 on the first poll, ends at the end of the file.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    received_at: ReceivedAt,
    replay: Option<FileReplay>,
    start: i64,
    announced: bool,
    paused: bool,
}

impl FileSource {
    /// A source replaying `path`; records' receive times come from `received_at`.
    pub fn new(path: impl Into<PathBuf>, received_at: ReceivedAt) -> Self {
        FileSource { path: path.into(), received_at, replay: None, start: 0, announced: false, paused: false }
    }

    /// The source name written into coordinates (the path as given).
    pub fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn replay(&mut self) -> Result<&mut FileReplay, Error> {
        if self.replay.is_none() {
            self.replay = Some(FileReplay::open_at(&self.path, self.received_at.clone(), self.start)?);
        }
        Ok(self.replay.as_mut().expect("opened above"))
    }
}

impl Source for FileSource {
    fn seek(&mut self, offsets: &Offsets) -> Result<(), Error> {
        let start = offsets.get(&(self.name(), 0)).copied().unwrap_or(0).max(0);
        if self.replay.as_ref().is_none_or(|r| r.next_offset() != start) {
            self.start = start;
            self.replay = None;
        }
        Ok(())
    }

    async fn poll(&mut self, out: &mut Vec<Record>, max: usize, wait: Duration) -> Result<Polled, Error> {
        let mut polled = Polled::default();
        if !self.announced {
            // The assignment comes alone, so the caller can seek before any record is read.
            self.announced = true;
            polled.assignments.push(Assignment::Assigned(vec![(self.name(), 0)]));
            return Ok(polled);
        }
        if self.paused {
            tokio::time::sleep(wait).await;
            return Ok(polled);
        }
        let replay = self.replay()?;
        while polled.records < max {
            match replay.next_record()? {
                Some(r) => {
                    out.push(r);
                    polled.records += 1;
                }
                None => {
                    polled.end = true;
                    break;
                }
            }
        }
        Ok(polled)
    }

    fn pause(&mut self) -> Result<(), Error> {
        self.paused = true;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), Error> {
        self.paused = false;
        Ok(())
    }

    fn committed(&mut self, _offsets: &Offsets) -> Result<(), Error> {
        Ok(())
    }
}
