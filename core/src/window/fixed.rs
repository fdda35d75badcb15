//! Tumbling and hopping windows.

use crate::time::{Duration, EventTime};
use crate::window::Window;

/// Windows of length `size` starting every `slide`, aligned so that starts are `offset + k * slide`
/// (k any integer, counted from the Unix epoch). Tumbling windows have `slide == size`.
///
/// Invariants (checked by the constructors): `size > 0`, `0 < slide <= size`, `size` is a multiple of
/// `slide`, `offset < slide`. Every event therefore lies in exactly `size / slide` windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixedWindows {
    size: Duration,
    slide: Duration,
    offset: Duration,
}

/// Why a fixed-window definition is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FixedWindowError {
    /// Zero-length windows.
    #[error("size must be greater than 0s")]
    ZeroSize,
    /// Zero slide.
    #[error("slide must be greater than 0s")]
    ZeroSlide,
    /// Slide larger than the window: events between windows would belong to none.
    #[error("slide ({slide}) must not exceed size ({size})")]
    SlideExceedsSize {
        /// Window size.
        size: Duration,
        /// Window slide.
        slide: Duration,
    },
    /// Size not a multiple of slide.
    #[error("size ({size}) must be a multiple of slide ({slide})")]
    NotMultiple {
        /// Window size.
        size: Duration,
        /// Window slide.
        slide: Duration,
    },
    /// Offset of a whole slide or more.
    #[error("offset ({offset}) must be less than {what} ({limit})")]
    OffsetTooLarge {
        /// The offset given.
        offset: Duration,
        /// "size" or "slide".
        what: &'static str,
        /// The bound.
        limit: Duration,
    },
}

impl FixedWindows {
    /// Tumbling windows `[offset + k*size, offset + (k+1)*size)`.
    pub fn tumbling(size: Duration, offset: Duration) -> Result<Self, FixedWindowError> {
        if size.is_zero() {
            return Err(FixedWindowError::ZeroSize);
        }
        if offset >= size {
            return Err(FixedWindowError::OffsetTooLarge { offset, what: "size", limit: size });
        }
        Ok(FixedWindows { size, slide: size, offset })
    }

    /// Hopping windows of length `size` every `slide`.
    pub fn hopping(size: Duration, slide: Duration, offset: Duration) -> Result<Self, FixedWindowError> {
        if size.is_zero() {
            return Err(FixedWindowError::ZeroSize);
        }
        if slide.is_zero() {
            return Err(FixedWindowError::ZeroSlide);
        }
        if slide > size {
            return Err(FixedWindowError::SlideExceedsSize { size, slide });
        }
        if size.as_micros() % slide.as_micros() != 0 {
            return Err(FixedWindowError::NotMultiple { size, slide });
        }
        if offset >= slide {
            return Err(FixedWindowError::OffsetTooLarge { offset, what: "slide", limit: slide });
        }
        Ok(FixedWindows { size, slide, offset })
    }

    /// Window length.
    pub fn size(&self) -> Duration {
        self.size
    }

    /// Distance between consecutive window starts.
    pub fn slide(&self) -> Duration {
        self.slide
    }

    /// Alignment of window starts relative to the epoch.
    pub fn offset(&self) -> Duration {
        self.offset
    }

    /// Whether `slide == size`.
    pub fn is_tumbling(&self) -> bool {
        self.size == self.slide
    }

    /// How many windows each event belongs to: `size / slide`.
    pub fn windows_per_event(&self) -> usize {
        usize::try_from(self.size.as_micros() / self.slide.as_micros()).unwrap_or(usize::MAX)
    }

    /// The start of the latest window containing `t`.
    pub fn last_start(&self, t: EventTime) -> EventTime {
        let slide = self.slide.as_micros();
        let phase = (t.as_micros() - self.offset.as_micros()).rem_euclid(slide);
        EventTime::from_micros(t.as_micros() - phase).unwrap_or(EventTime::MIN)
    }

    fn window_at(&self, start_us: i64) -> Window {
        let start = EventTime::from_micros(start_us).unwrap_or(EventTime::MIN);
        let end = start.saturating_add(self.size);
        Window::new(start, end).expect("size > 0 keeps start < end")
    }

    /// The windows containing `t`, oldest first; exactly [`Self::windows_per_event`] of them.
    pub fn assign(&self, t: EventTime) -> impl ExactSizeIterator<Item = Window> + '_ {
        let last = self.last_start(t).as_micros();
        let n = self.windows_per_event();
        let slide = self.slide.as_micros();
        (0..n).rev().map(move |k| self.window_at(last - k as i64 * slide))
    }

    /// Every window that overlaps `[from, to)`, oldest first (including windows that contain no event).
    pub fn overlapping(&self, from: EventTime, to: EventTime) -> impl Iterator<Item = Window> + '_ {
        let first = self.last_start(from).as_micros() - (self.windows_per_event() as i64 - 1) * self.slide.as_micros();
        let slide = self.slide.as_micros();
        (0..)
            .map(move |k: i64| first + k * slide)
            .take_while(move |&s| s < to.as_micros())
            .map(|s| self.window_at(s))
            .filter(move |w| w.end() > from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Duration {
        s.parse().unwrap()
    }

    fn t(us: i64) -> EventTime {
        EventTime::from_micros(us).unwrap()
    }

    #[test]
    fn boundaries_belong_to_the_later_window() {
        let w = FixedWindows::tumbling(d("1m"), Duration::ZERO).unwrap();
        let at_edge = t(60_000_000);
        let got: Vec<_> = w.assign(at_edge).collect();
        assert_eq!(got, vec![Window::new(t(60_000_000), t(120_000_000)).unwrap()]);
        let before: Vec<_> = w.assign(t(59_999_999)).collect();
        assert_eq!(before, vec![Window::new(t(0), t(60_000_000)).unwrap()]);
    }

    #[test]
    fn negative_times_and_offsets_align() {
        let w = FixedWindows::tumbling(d("10s"), d("3s")).unwrap();
        let got: Vec<_> = w.assign(t(-1)).collect();
        assert_eq!(got, vec![Window::new(t(-7_000_000), t(3_000_000)).unwrap()]);
    }

    #[test]
    fn hopping_windows_of_an_event() {
        let w = FixedWindows::hopping(d("5m"), d("1m"), Duration::ZERO).unwrap();
        let got: Vec<_> = w.assign(t(150_000_000)).map(|w| w.start().as_micros() / 60_000_000).collect();
        assert_eq!(got, vec![-2, -1, 0, 1, 2]);
    }

    #[test]
    fn invalid_definitions_are_refused() {
        assert_eq!(FixedWindows::tumbling(Duration::ZERO, Duration::ZERO), Err(FixedWindowError::ZeroSize));
        assert!(matches!(
            FixedWindows::hopping(d("5m"), d("2m"), Duration::ZERO),
            Err(FixedWindowError::NotMultiple { .. })
        ));
        assert!(matches!(
            FixedWindows::hopping(d("1m"), d("2m"), Duration::ZERO),
            Err(FixedWindowError::SlideExceedsSize { .. })
        ));
        assert!(matches!(FixedWindows::tumbling(d("1m"), d("1m")), Err(FixedWindowError::OffsetTooLarge { .. })));
    }

    #[test]
    fn overlapping_lists_every_window_touching_the_range() {
        let w = FixedWindows::hopping(d("2m"), d("1m"), Duration::ZERO).unwrap();
        let got: Vec<_> =
            w.overlapping(t(60_000_000), t(180_000_000)).map(|w| w.start().as_micros() / 60_000_000).collect();
        assert_eq!(got, vec![0, 1, 2]);
    }

    proptest! {
        #[test]
        fn hopping_assigns_size_over_slide_windows_each_containing_t(
            slide_s in 1i64..600, mult in 1i64..12, offset_frac in 0.0f64..1.0, t_us in -10i64.pow(13)..10i64.pow(13),
        ) {
            let slide = Duration::from_micros(slide_s * 1_000_000).unwrap();
            let size = Duration::from_micros(slide_s * mult * 1_000_000).unwrap();
            let offset = Duration::from_micros((slide.as_micros() as f64 * offset_frac) as i64 % slide.as_micros()).unwrap();
            let w = FixedWindows::hopping(size, slide, offset).unwrap();
            let t = t(t_us);
            let got: Vec<Window> = w.assign(t).collect();
            prop_assert_eq!(got.len() as i64, mult);
            for win in &got {
                prop_assert!(win.contains(t));
                prop_assert_eq!(win.len(), size);
                prop_assert_eq!((win.start().as_micros() - offset.as_micros()).rem_euclid(slide.as_micros()), 0);
            }
            // distinct, consecutive starts
            for pair in got.windows(2) {
                prop_assert_eq!(pair[1].start().as_micros() - pair[0].start().as_micros(), slide.as_micros());
            }
            // no other aligned window contains t
            let before = got[0].start().as_micros() - slide.as_micros();
            prop_assert!(before + size.as_micros() <= t.as_micros());
            let after = got[got.len() - 1].start().as_micros() + slide.as_micros();
            prop_assert!(after > t.as_micros());
        }
    }
}
