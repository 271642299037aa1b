//! ringmq name server: broker registry and core-aware topic routes.
//!
//! # Layout
//! - `ringmq-namesrv` (src/main.rs): the name server process; its registry and route tables arrive with issue #5.
//!
//! Nothing else is here yet: issue #5 builds this crate on `ringmq-core`.
