//! Engine tests: scenarios per pane, policy and window kind, and property tests against a batch
//! reference computed with tidemark-core alone.

mod common;
mod props;
mod scenarios;
mod suspects;
