//! Cross-crate integration tests: one test binary, one module per concern.

mod dependency_rule;
