//! ringmq native client library on monoio, and the ringmq admin CLI.
//!
//! # Layout
//! - `ringmq` (src/main.rs): the admin CLI (issue #5); the producer, consumers and route cache arrive with issue #6.
//!
//! Nothing else is here yet: issue #6 builds this crate on `ringmq-core`.
