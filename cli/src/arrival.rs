//! A file source whose lines carry their arrival time: the service's clock follows the recorded arrivals.

use std::time::Duration as StdDuration;

use tidemark_stream::{Clock as _, FileSource, ManualClock, Offsets, Polled, Record, Source};

/// A file source that moves the service's clock to the arrival time of what it just read, so panes,
/// watermarks and emission times follow the recorded (or simulated) arrivals instead of the replay's speed.
#[derive(Debug)]
pub struct ArrivalClockSource {
    inner: FileSource,
    clock: ManualClock,
    bar: Option<indicatif::ProgressBar>,
}

impl ArrivalClockSource {
    /// Wraps `inner` (built with `ReceivedAt::Field`), moving `clock`; `bar` counts the lines read.
    pub fn new(inner: FileSource, clock: ManualClock, bar: Option<indicatif::ProgressBar>) -> Self {
        ArrivalClockSource { inner, clock, bar }
    }
}

impl Source for ArrivalClockSource {
    fn seek(&mut self, offsets: &Offsets) -> Result<(), tidemark_stream::Error> {
        self.inner.seek(offsets)
    }

    async fn poll(
        &mut self,
        out: &mut Vec<Record>,
        max: usize,
        wait: StdDuration,
    ) -> Result<Polled, tidemark_stream::Error> {
        let before = out.len();
        let polled = self.inner.poll(out, max, wait).await?;
        if let Some(latest) = out[before..].iter().map(|r| r.received_at).max()
            && latest > self.clock.now()
        {
            self.clock.set(latest);
        }
        if let Some(bar) = &self.bar {
            bar.inc(polled.records as u64);
        }
        Ok(polled)
    }

    fn pause(&mut self) -> Result<(), tidemark_stream::Error> {
        self.inner.pause()
    }

    fn resume(&mut self) -> Result<(), tidemark_stream::Error> {
        self.inner.resume()
    }

    fn committed(&mut self, offsets: &Offsets) -> Result<(), tidemark_stream::Error> {
        self.inner.committed(offsets)
    }
}
