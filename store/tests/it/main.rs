//! Integration tests of tidemark-store against real services: one folder per service.

mod common;
mod delta;
mod postgres;
mod s3;
