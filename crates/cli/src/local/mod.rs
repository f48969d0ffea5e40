//! `up` and `down`: a whole cluster on this machine, on the embedded store.
//!
//! Layout of DIR:
//! ```text
//! DIR/pgbaton.toml           client config: every other command takes it with -c
//! DIR/store.db               the embedded store (SQLite), shared by the agents
//! DIR/replication.password   the replication user's password (0600)
//! DIR/api.token              the token for the agents' mutating API requests (0600)
//! DIR/archive/               WAL archive (with --archive)
//! DIR/nI/node.toml           member I's node config
//! DIR/nI/data/               its data directory (0700)
//! DIR/nI/run/                its Unix socket directory
//! DIR/nI/pgpass              its passfile (0600)
//! DIR/nI/agent.log, postgres.log, agent.pid
//! ```
//! Every check runs before anything is created, so a refused `up` leaves nothing behind.
//!
//! Its modules: `layout` (where everything goes in DIR), `up` (checks, creation, starting an
//! existing cluster), `agents` (the agent processes: start, find, and a PostgreSQL left
//! without its agent), `wait` (following the members until healthy, with progress) and
//! `down`.

mod agents;
mod down;
mod layout;
mod up;
mod wait;

pub(crate) use agents::stop_orphan_postgres;
pub use down::down;
pub use up::{up, UpOptions};
