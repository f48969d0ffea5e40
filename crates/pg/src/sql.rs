//! SQL against the local PostgreSQL over its Unix socket, as the superuser (peer auth).

use anyhow::{Context, Result};
use pgbaton_core::config::NodeConfig;
use pgbaton_core::model::{Lsn, SlotInfo};
use pgbaton_core::render::{quote_ident, quote_literal};
use pgbaton_core::sync::{SyncNames, WalSender};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio_postgres::{Client, NoTls, Row, Statement};

/// A connection that prepares the probe's statements once: a prepared statement runs in one
/// round trip, an unprepared one in two (parse, then bind and execute). The probe runs every
/// loop, so this halves its round trips, and the wake-ups of an idle agent with them.
/// Everything else uses the [`Client`] it dereferences to.
pub struct Session {
    client: Client,
    prepared: Mutex<HashMap<&'static str, Statement>>,
}

impl Session {
    pub fn new(client: Client) -> Session {
        Session {
            client,
            prepared: Mutex::default(),
        }
    }

    async fn statement(&self, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self.lock().get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.lock().insert(sql, s.clone());
        Ok(s)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Statement>> {
        self.prepared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `sql`, prepared on first use, expecting exactly one row.
    pub async fn one(&self, sql: &'static str) -> Result<Row> {
        let st = self.statement(sql).await?;
        Ok(self.client.query_one(&st, &[]).await?)
    }

    /// `sql`, prepared on first use.
    pub async fn rows(&self, sql: &'static str) -> Result<Vec<Row>> {
        let st = self.statement(sql).await?;
        Ok(self.client.query(&st, &[]).await?)
    }
}

impl std::ops::Deref for Session {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Connect to the local PostgreSQL as the superuser through the Unix socket.
pub async fn connect(cfg: &NodeConfig, dbname: &str) -> Result<Client> {
    let mut c = tokio_postgres::Config::new();
    c.host_path(cfg.socket_dir())
        .port(cfg.postgresql.port)
        .user(&cfg.postgresql.superuser)
        .dbname(dbname)
        .application_name("pgbaton")
        .connect_timeout(Duration::from_secs(3));
    let (client, conn) = tokio::time::timeout(Duration::from_secs(5), c.connect(NoTls))
        .await
        .context("connect to the local PostgreSQL: timed out")?
        .context("connect to the local PostgreSQL")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Another PostgreSQL on this host, reached through its Unix socket as `user`: its data
/// directory, whether it is in recovery, and its system identifier. For a backup taken
/// from a standby, which needs the primary's files at hand.
pub async fn local_instance(
    socket_dir: &std::path::Path,
    port: u16,
    user: &str,
) -> Result<(std::path::PathBuf, bool, String)> {
    let mut c = tokio_postgres::Config::new();
    c.host_path(socket_dir)
        .port(port)
        .user(user)
        .dbname("postgres")
        .application_name("pgbaton")
        .connect_timeout(Duration::from_secs(3));
    let (client, conn) = tokio::time::timeout(Duration::from_secs(5), c.connect(NoTls))
        .await
        .context("timed out")??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let row = tokio::time::timeout(
        Duration::from_secs(10),
        client.query_one(
            "SELECT current_setting('data_directory'), pg_is_in_recovery(), \
             (SELECT system_identifier::text FROM pg_control_system())",
            &[],
        ),
    )
    .await
    .context("no answer within 10 s")??;
    Ok((
        std::path::PathBuf::from(row.get::<_, String>(0)),
        row.get(1),
        row.get(2),
    ))
}

/// What one probe of a running PostgreSQL sees.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    pub in_recovery: bool,
    pub version: String,
    pub system_id: String,
    pub timeline: Option<u32>,
    /// Primary: current WAL LSN; standby: last replayed.
    pub lsn: Option<Lsn>,
    pub receive_lsn: Option<Lsn>,
    /// Standby: pg_stat_wal_receiver.status ("streaming", ...), if a receiver runs.
    pub receiver_status: Option<String>,
    /// Standby: the host:port the receiver is connected to.
    pub receiver_sender: Option<(String, u16)>,
    /// Physical slots (on any role).
    pub slots: Vec<SlotInfo>,
    /// The configured primary_conninfo (empty on a primary).
    pub primary_conninfo: String,
    /// Standby: ms since the last replayed transaction committed on the primary, 0 when
    /// everything received is replayed.
    pub replay_lag_ms: Option<u64>,
    /// Primary: `synchronous_standby_names`.
    pub sync_names: SyncNames,
    /// When the probe began (wall-clock ms): every position in it is at least this recent.
    pub at_ms: u64,
    /// Primary: its WAL senders (`pg_stat_replication`).
    pub senders: Vec<WalSender>,
}

fn lsn(s: Option<String>) -> Option<Lsn> {
    s.and_then(|s| s.parse().ok())
}

/// The physical slots and how much WAL each holds back, from the replayed (standby) or the
/// written (primary) position: the same text but for that function, prepared once each.
const SLOTS_ON_STANDBY: &str = "SELECT slot_name::text, active, restart_lsn::text, \
     pg_wal_lsn_diff(pg_last_wal_replay_lsn(), restart_lsn)::bigint \
     FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY slot_name";
const SLOTS_ON_PRIMARY: &str = "SELECT slot_name::text, active, restart_lsn::text, \
     pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
     FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY slot_name";

const STANDBY_POSITION: &str = "SELECT pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text, \
        r.status, r.sender_host, r.sender_port, r.received_tli, \
        CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
             ELSE (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::bigint END, \
        current_setting('synchronous_standby_names') \
    FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver r ON true";

const NEWEST_HISTORY: &str =
    "SELECT max(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{8}\\.history$'";

const PRIMARY_POSITION: &str =
    "SELECT pg_current_wal_lsn()::text, substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8), \
            current_setting('synchronous_standby_names')";

/// A standby's replay and receiver state into `p`, from a row of `STANDBY_POSITION` and the
/// newest timeline history file in its `pg_wal`.
fn standby_position(p: &mut Probe, row: &Row, history: Option<String>) {
    p.lsn = lsn(row.get(0));
    p.receive_lsn = lsn(row.get(1));
    p.receiver_status = row.get(2);
    let host: Option<String> = row.get(3);
    let port: Option<i32> = row.get(4);
    p.receiver_sender = host.zip(port).map(|(h, port)| (h, port as u16));
    // The timeline it replays: the newest of the receiver's, the last restartpoint's and
    // the newest history file it has (a standby that followed a promotion has the new
    // timeline's history file even while its WAL receiver is down; the restartpoint's
    // stays on the old timeline until the next restartpoint).
    let from_history = history.and_then(|h| u32::from_str_radix(&h[..8], 16).ok());
    let received = row.get::<_, Option<i32>>(5).map(|t| t as u32);
    p.timeline = [p.timeline, received, from_history]
        .into_iter()
        .flatten()
        .max();
    p.replay_lag_ms = row.get::<_, Option<i64>>(6).map(|ms| ms.max(0) as u64);
    // The list its data directory carries (from an earlier primary): a promotion starts
    // with it, and the decision clears it when it could make commits wait.
    p.sync_names = SyncNames::parse(&row.get::<_, String>(7));
}

/// One round of status queries.
pub async fn probe(client: &Session) -> Result<Probe> {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let row = client
        .one(
            "SELECT pg_is_in_recovery(), current_setting('server_version'), \
                    (SELECT system_identifier::text FROM pg_control_system()), \
                    (SELECT timeline_id FROM pg_control_checkpoint()), \
                    current_setting('primary_conninfo')",
        )
        .await
        .context("probe PostgreSQL status")?;
    let mut p = Probe {
        in_recovery: row.get(0),
        version: row.get(1),
        system_id: row.get(2),
        timeline: row.get::<_, Option<i32>>(3).map(|t| t as u32),
        primary_conninfo: row.get(4),
        at_ms,
        ..Default::default()
    };
    // The rest goes out in one pipeline (tokio-postgres sends queries polled together
    // without waiting for each answer): one round trip, one wake-up, not three. `biased`:
    // polled, so sent and answered, in the order written, the position before the rest.
    let slots = async {
        let sql = if p.in_recovery {
            SLOTS_ON_STANDBY
        } else {
            SLOTS_ON_PRIMARY
        };
        client.rows(sql).await.context("list replication slots")
    };
    let rows = if p.in_recovery {
        let (row, history, rows) = tokio::try_join!(
            biased;
            async {
                client
                    .one(STANDBY_POSITION)
                    .await
                    .context("probe the standby's WAL receiver")
            },
            async {
                client
                    .one(NEWEST_HISTORY)
                    .await
                    .context("list the standby's timeline history files")
            },
            slots
        )?;
        standby_position(&mut p, &row, history.get(0));
        rows
    } else {
        let (row, senders, rows) = tokio::try_join!(
            biased;
            async {
                client
                    .one(PRIMARY_POSITION)
                    .await
                    .context("probe the primary's WAL position")
            },
            crate::syncrep::senders(client),
            slots
        )?;
        p.lsn = lsn(row.get(0));
        p.sync_names = SyncNames::parse(&row.get::<_, String>(2));
        p.senders = senders;
        // The timeline of the WAL being written: the first 8 hex digits of its file name
        // (pg_control_checkpoint() still shows the old one until the next checkpoint after
        // a promotion).
        if let Some(tli) = row
            .get::<_, Option<String>>(1)
            .and_then(|t| u32::from_str_radix(&t, 16).ok())
        {
            p.timeline = Some(tli);
        }
        rows
    };
    p.slots = rows
        .iter()
        .map(|r| SlotInfo {
            name: r.get(0),
            active: r.get(1),
            restart_lsn: lsn(r.get(2)),
            retained_bytes: r.get::<_, Option<i64>>(3).map(|b| b.max(0) as u64),
        })
        .collect();
    Ok(p)
}

async fn slot_exists(client: &Client, name: &str) -> Result<bool> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .with_context(|| format!("look up replication slot {name}"))?
        .is_some())
}

/// pg_stat_archiver: failures, the last failed file, and seconds since that failure.
pub async fn archiver_stats(client: &Client) -> Result<(u64, Option<String>, Option<u64>)> {
    let r = client
        .query_one(
            "SELECT failed_count, last_failed_wal, \
                    extract(epoch FROM now() - last_failed_time)::bigint \
             FROM pg_stat_archiver",
            &[],
        )
        .await
        .context("read pg_stat_archiver")?;
    Ok((
        r.get::<_, i64>(0).max(0) as u64,
        r.get(1),
        r.get::<_, Option<i64>>(2).map(|s| s.max(0) as u64),
    ))
}

pub use pgbaton_core::model::SlotEnsured;

/// Create the physical slot if it does not exist (or was invalidated), reserving WAL from
/// now on.
pub async fn ensure_physical_slot(client: &Client, name: &str) -> Result<SlotEnsured> {
    let status: Option<(Option<String>, bool)> = client
        .query_opt(
            "SELECT wal_status, active FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .with_context(|| format!("look up replication slot {name}"))?
        .map(|r| (r.get(0), r.get(1)));
    let outcome = match status {
        None => SlotEnsured::Created,
        // A walsender still attached cannot be dropped from under: next time.
        Some((Some(s), false)) if s == "lost" => {
            drop_slot(client, name).await?;
            SlotEnsured::Recreated
        }
        Some(_) => return Ok(SlotEnsured::Existed),
    };
    client
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true)",
            &[&name],
        )
        .await
        .with_context(|| format!("create replication slot {name}"))?;
    Ok(outcome)
}

/// Move a physical slot forward to `lsn` (PostgreSQL caps it at what this server has; a
/// standby's slots too).
pub async fn advance_slot(client: &Client, name: &str, lsn: Lsn) -> Result<()> {
    client
        .execute(
            "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&name, &lsn.to_string()],
        )
        .await
        .with_context(|| format!("advance replication slot {name} to {lsn}"))?;
    Ok(())
}

/// Create or update the replication role. Only a SCRAM verifier computed here travels to
/// the server, so the clear-text password never appears in SQL, a server log or
/// pg_stat_activity.
pub async fn ensure_replication_role(client: &Client, user: &str, password: &str) -> Result<()> {
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user])
        .await?
        .is_some();
    let verb = if exists { "ALTER" } else { "CREATE" };
    client
        .batch_execute(&format!(
            "{verb} ROLE {} WITH LOGIN REPLICATION PASSWORD {}",
            quote_ident(user),
            quote_literal(&verifier)
        ))
        .await
        .with_context(|| format!("{} the replication role {user}", verb.to_lowercase()))?;
    // What pg_rewind needs from its source connection, so a former primary can be rewound
    // with the replication user rather than the superuser.
    let u = quote_ident(user);
    client
        .batch_execute(&format!(
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO {u}; \
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO {u}; \
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO {u}; \
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {u};"
        ))
        .await
        .context("grant pg_rewind's functions to the replication role")?;
    Ok(())
}

/// Create the databases that do not exist yet.
pub async fn ensure_databases(client: &Client, names: &[String]) -> Result<Vec<String>> {
    let mut created = Vec::new();
    for name in names {
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[name])
            .await?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
                .await
                .with_context(|| format!("create database {name}"))?;
            created.push(name.clone());
        }
    }
    Ok(created)
}

/// Drop a physical slot if it exists. Returns whether it was dropped.
pub async fn drop_slot(client: &Client, name: &str) -> Result<bool> {
    let exists = slot_exists(client, name).await?;
    if !exists {
        return Ok(false);
    }
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&name])
        .await
        .with_context(|| format!("drop replication slot {name}"))?;
    Ok(true)
}

/// Promote the standby and wait (bounded) until it accepts writes.
pub async fn promote(client: &Client, timeout: Duration) -> Result<()> {
    let secs = timeout.as_secs().clamp(1, 3600) as i32;
    let done: bool = client
        .query_one("SELECT pg_promote(true, $1)", &[&secs])
        .await
        .context("promote (pg_promote)")?
        .get(0);
    if !done {
        anyhow::bail!("PostgreSQL did not finish promoting within {secs} s");
    }
    Ok(())
}

/// The parameters whose new value in the config files waits for a restart (PostgreSQL's
/// `pg_settings.pending_restart`, as this backend saw the files at its last reload).
pub async fn pending_restart(client: &Client) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name",
            &[],
        )
        .await
        .context("read pg_settings.pending_restart")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The server's catalogue of parameters, to check values against before they are stored.
pub async fn catalogue(client: &Client) -> Result<pgbaton_core::cluster_config::Catalogue> {
    use pgbaton_core::cluster_config::{Catalogue, Setting, VarType};
    let rows = client
        .query(
            "SELECT name, vartype, context, unit, min_val, max_val, enumvals, \
             current_setting('server_version') FROM pg_settings",
            &[],
        )
        .await
        .context("read pg_settings")?;
    let mut settings = Vec::with_capacity(rows.len());
    let mut version = String::new();
    for r in &rows {
        let vartype: String = r.get(1);
        let Some(vartype) = VarType::parse(&vartype) else {
            continue;
        };
        let bound = |i: usize| r.get::<_, Option<String>>(i).and_then(|v| v.parse().ok());
        settings.push(Setting {
            name: r.get(0),
            vartype,
            context: r.get(2),
            unit: r.get(3),
            min: bound(4),
            max: bound(5),
            enumvals: r.get::<_, Option<Vec<String>>>(6).unwrap_or_default(),
        });
        version = r.get(7);
    }
    Ok(Catalogue::new(settings, &version))
}
