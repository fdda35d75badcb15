//! Cross-crate integration tests: one test binary, one module per concern.

mod archive_to_batch;
mod bad_input;
mod dependency_rule;
mod faults;
mod hostile;
mod reconcile_scan;
mod scenarios;
