//! ringmq load generator: open-loop benchmarks with merged HdrHistograms and recorded reports.
//!
//! # Layout
//! - `ringmq-loadgen` (src/main.rs): workloads, drivers and reports arrive with issue #7.
//!
//! Nothing else is here yet: issue #7 builds this crate on `ringmq-core`.
