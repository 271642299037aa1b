//! ringmq native client library on monoio, and the ringmq admin CLI.
//!
//! # Layout
//! - [`admin`]: blocking request/answer connections and name server
//!   failover, for the admin CLI and tests.
//! - `ringmq` (src/main.rs): the admin CLI: topics, cluster, broker status,
//!   group progress.
//! - The producer, consumers and route cache (on monoio) arrive with issue #6.

pub mod admin;
