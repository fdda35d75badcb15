//! The backoff between attempts of a write that lost a race with another writer (both serving-store
//! drivers and the raw archive).

pub(crate) fn backoff(attempt: u32) -> std::time::Duration {
    let base = 10u64 << attempt.min(6);
    // spread retries of racing writers apart
    let jitter = u64::from(std::process::id() ^ (crate::now().as_micros() as u32)) % base;
    std::time::Duration::from_millis(base + jitter)
}
