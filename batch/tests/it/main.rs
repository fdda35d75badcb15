//! Integration tests of tidemark-batch (one test binary).

mod common;
mod equivalence;
mod inputs;
mod view;
