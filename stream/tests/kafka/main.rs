//! Kafka source tests: against a real Kafka-protocol broker (`tansu`, [`tansu`]) and against librdkafka's
//! mock cluster with injected faults ([`faults`]).

mod common;
mod config;
mod faults;
mod tansu;
