//! The local PostgreSQL as something you command: find its binaries, look at a data
//! directory, initdb, write pgbaton's config files, start and stop, SQL probes, slots,
//! and cloning with pg_basebackup (with progress).
//!
//! Architecture invariant: nothing here decides anything. Each function does one thing
//! it is asked to and reports what happened; the agent decides (through `pgbaton_core`).
//! Nothing here ever deletes a data directory.

pub mod archive;
pub mod backrest;
pub mod backrest_push;
pub mod bins;
pub mod clone;
pub mod datadir;
pub mod files;
pub mod rewind;
pub mod server;
pub mod sql;
pub mod syncrep;

pub use bins::Binaries;
