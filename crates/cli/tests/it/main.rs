//! Integration tests: the real `pgbaton` binary against real PostgreSQL processes.
//! One test target (as ripgrep does) keeps link times down.

mod api;
mod archive;
mod backup;
mod bad_input;
mod browser;
mod cluster;
mod config;
mod deploy;
mod docker;
mod failover;
mod haproxy;
mod harness;
mod operations;
mod synchronous;
mod tls;
