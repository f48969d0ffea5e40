//! Integration tests: the real `pgbaton` binary against real PostgreSQL processes.
//! One test target (as ripgrep does) keeps link times down.

mod bad_input;
mod cluster;
mod harness;
mod api;
mod operations;
