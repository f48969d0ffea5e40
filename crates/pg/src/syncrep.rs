//! Synchronous replication on the primary: its WAL senders, setting
//! `synchronous_standby_names` so that every process really applies it, and the barrier
//! that proves every commit acknowledged so far is on the listed standbys.

use crate::sql::Session;
use anyhow::{bail, Context, Result};
use pgbaton_core::config::NodeConfig;
use pgbaton_core::model::Lsn;
use pgbaton_core::render::quote_literal;
use pgbaton_core::sync::{SyncNames, WalSender};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// How long each wait below may take before the step fails (and is retried next loop).
const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// The primary's WAL senders (`pg_stat_replication`), walsenders of base backups left out.
pub async fn senders(client: &Session) -> Result<Vec<WalSender>> {
    let rows = client
        .rows(
            "SELECT application_name, state, flush_lsn::text, sync_priority \
             FROM pg_stat_replication WHERE state IN ('streaming', 'catchup', 'startup') \
             ORDER BY application_name",
        )
        .await
        .context("read pg_stat_replication")?;
    Ok(rows
        .iter()
        .map(|r| WalSender {
            name: r.get(0),
            streaming: r.get::<_, Option<String>>(1).as_deref() == Some("streaming"),
            flush: r.get::<_, Option<String>>(2).and_then(|l| l.parse().ok()),
            priority: r.get::<_, i32>(3).max(0) as u32,
        })
        .collect())
}

/// Set `synchronous_standby_names` and return once every process that decides whether a
/// commit waits, and for whom, has loaded it:
/// 1. `ALTER SYSTEM` (kept across restarts: a restarted primary keeps waiting on its
///    standbys) and `pg_reload_conf()`;
/// 2. a new connection shows the value: the postmaster reloaded and signalled every child;
/// 3. when commits did not wait before, a `CHECKPOINT`: the checkpointer, which tells the
///    backends whether commits wait at all, handles its reload before it starts one;
/// 4. every WAL sender's `sync_priority` is the one the new list gives it (they release
///    waiting commits by their own copy of the list);
/// 5. when the list waits, a WAL record written and flushed without waiting on standbys:
///    a WAL sender releases waiting commits only when its standby replies, and a standby
///    that already flushed everything replies only at its next status interval
///    (`wal_receiver_status_interval`, 10 s by default). Measured before this: commits
///    waited 4.2 s after the list moved from a lost standby to one that was streaming.
pub async fn set_names(client: &Session, cfg: &NodeConfig, names: &SyncNames) -> Result<()> {
    let before = current(client).await?;
    let text = names.to_string();
    client
        .batch_execute(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = {}",
            quote_literal(&text)
        ))
        .await
        .context("ALTER SYSTEM SET synchronous_standby_names")?;
    client
        .execute("SELECT pg_reload_conf()", &[])
        .await
        .context("pg_reload_conf()")?;
    wait_for("a new connection to show it", || async {
        let c = crate::sql::connect(cfg, "postgres").await?;
        Ok(current(&c).await? == *names)
    })
    .await?;
    if before == SyncNames::Off && *names != SyncNames::Off {
        client
            .batch_execute("CHECKPOINT")
            .await
            .context("CHECKPOINT (so that the checkpointer loaded the new list)")?;
    }
    wait_for("every WAL sender to load it", || async {
        Ok(senders(client)
            .await?
            .iter()
            .all(|s| s.priority == names.priority_of(&s.name)))
    })
    .await
    .with_context(|| format!("synchronous_standby_names = '{text}'"))?;
    if *names != SyncNames::Off {
        let nudge = client
            .batch_execute(
                "BEGIN; SET LOCAL synchronous_commit = local; \
                 SELECT pg_logical_emit_message(true, 'pgbaton', 'synchronous_standby_names changed'); \
                 COMMIT",
            )
            .await;
        if nudge.is_err() {
            // Not left in an aborted transaction block: the client is the agent's own.
            let _ = client.batch_execute("ROLLBACK").await;
        }
        nudge.context("write a WAL record so that the standbys reply under the new list")?;
    }
    Ok(())
}

/// `synchronous_standby_names` as this session sees it.
pub async fn current(client: &Client) -> Result<SyncNames> {
    let text: String = client
        .query_one("SELECT current_setting('synchronous_standby_names')", &[])
        .await
        .context("read synchronous_standby_names")?
        .get(0);
    Ok(SyncNames::parse(&text))
}

/// Return once `names.acks()` of the listed standbys have flushed everything this
/// primary flushed when called: every commit acknowledged until then (a commit is
/// acknowledged only after its local flush) is then on that many listed standbys.
pub async fn barrier(client: &Session, names: &SyncNames) -> Result<Lsn> {
    let target: Lsn = client
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
        .context("read pg_current_wal_flush_lsn()")?
        .get::<_, String>(0)
        .parse()
        .context("parse pg_current_wal_flush_lsn()")?;
    let need = names.acks() as usize;
    if need == 0 {
        bail!("the list {names} names no standby: no barrier can prove anything");
    }
    wait_for(
        "the listed standbys to flush the barrier position",
        || async {
            let have = senders(client)
                .await?
                .iter()
                .filter(|s| names.priority_of(&s.name) > 0 && s.flush.is_some_and(|f| f >= target))
                .count();
            Ok(have >= need)
        },
    )
    .await
    .with_context(|| format!("barrier at {target} under {names}"))?;
    Ok(target)
}

async fn wait_for<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if start.elapsed() > WAIT {
            bail!("waited {} s for {what}", WAIT.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}
