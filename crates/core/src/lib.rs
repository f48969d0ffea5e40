//! pgbaton's pure core: the cluster model, config types and validation, the decision
//! `decide(cluster, local, now) -> actions`, and rendering of the text PostgreSQL reads.
//!
//! Architecture invariant: nothing here does IO. No tokio, no file system, no clock, no
//! environment: time is an argument, and everything outside is described by plain data.
//! So nothing here can fail for outside reasons, and all of it is tested without PostgreSQL.

pub mod cluster_config;
pub mod config;
pub mod decide;
pub mod failover;
pub mod health;
pub mod memory;
pub mod model;
pub mod ops;
pub mod publish;
pub mod render;
pub mod report;
pub mod sync;
