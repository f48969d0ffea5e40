//! New members and `reinit` from the pgBackRest repository: the latest backup restored
//! (a delta restore over the old copy for reinit), then the standby reads the WAL since the
//! backup from the archive and streams from the primary. pg_basebackup stays the fallback.
//!
//! And a new cluster's first member from another cluster's backup (`[bootstrap]`,
//! point-in-time recovery): restored with the recovery target, replayed up to it and paused
//! there; promoted only once this member holds the leader lease (`finish_recovery`).

use super::*;
use pgbaton_pg::backrest::{self, BackRest, Target};

impl local_pg::LocalPg {
    /// Restore the latest backup into the data directory. `Ok(false)`: the repository has
    /// no backup to restore (the caller copies the primary instead).
    pub(crate) async fn restore_from_repo(&mut self, replace: bool) -> Result<bool> {
        let Some(br) = BackRest::of(&self.cfg) else {
            return Ok(false);
        };
        let info = br.info().await?;
        if info.backups.is_empty() {
            info!("the pgBackRest repository has no backup yet: copying the primary with pg_basebackup");
            return Ok(false);
        }
        let (tli, history) = br.newest_timeline(&info).await?;
        let Some(latest) = backrest::usable_backup(&info.backups, tli, &history) else {
            info!(
                "no backup in the pgBackRest repository lies on timeline {tli}'s history: copying the \
                 primary with pg_basebackup"
            );
            return Ok(false);
        };
        let message = format!(
            "restoring backup {} from the pgBackRest repository",
            latest.label
        );
        info!(
            "{message}{}",
            if replace {
                " (delta restore over the old copy)"
            } else {
                ""
            }
        );
        if let Err(e) = self
            .publisher
            .status(
                MemberStatus::Cloning,
                None,
                Some(&message),
                self.handed_over,
            )
            .await
        {
            warn!("{e:#}");
        }
        let started = Instant::now();
        let data = self.cfg.data_dir.clone();
        if replace && data.join("PG_VERSION").exists() {
            // reinit, asked for: only the files that differ are copied.
            br.restore(&data, true, &Target::None, Some(&latest.label))
                .await?;
        } else {
            restore_via_scratch(&br, &data, &Target::None, Some(&latest.label)).await?;
        }
        info!(
            "restored backup {} in {:.1} s; the standby catches up from the archive, then streams",
            latest.label,
            started.elapsed().as_secs_f64()
        );
        Ok(true)
    }
}

impl local_pg::LocalPg {
    /// `[bootstrap]`: restore the backup that reaches the target into the (empty) data
    /// directory, through a scratch directory. PostgreSQL replays up to the target when it
    /// starts and waits there.
    pub(crate) async fn restore_for_bootstrap(&mut self) -> Result<()> {
        let (Some(br), Some(b)) = (BackRest::bootstrap_source(&self.cfg)?, &self.cfg.bootstrap)
        else {
            bail!("no [bootstrap] in the config");
        };
        let target = match (&b.target_time, &b.target_lsn) {
            (Some(t), _) => Target::Time(t.clone()),
            (None, Some(l)) => Target::Lsn(l.clone()),
            (None, None) => bail!("[bootstrap] names no target_time or target_lsn"),
        };
        refuse_a_second_bootstrap(&self.cfg)?;
        let what = match &target {
            Target::Time(t) => format!("time {t}"),
            Target::Lsn(l) => format!("LSN {l}"),
            Target::None => String::new(),
        };
        info!(
            "restoring stanza {} from {} up to just before {what} (point-in-time recovery; that repository is only read)",
            br.stanza,
            br.repo.display()
        );
        restore_via_scratch(&br, &self.cfg.data_dir, &target, None).await?;
        info!("restored; PostgreSQL replays up to the target when it starts");
        Ok(())
    }

    /// After `[bootstrap]`'s restore, with the leader lease held: wait until PostgreSQL has
    /// replayed up to the target and paused, promote it, and take the recovery settings
    /// out of postgresql.auto.conf. Nothing to do for a PostgreSQL out of recovery.
    pub(crate) async fn finish_recovery(&mut self, client: &tokio_postgres::Client) -> Result<()> {
        let in_recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await?
            .get(0);
        if in_recovery {
            let t0 = Instant::now();
            let mut said = Instant::now();
            loop {
                let state: String = client
                    .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
                    .await
                    .context("ask PostgreSQL whether its recovery reached the target")?
                    .get(0);
                if state == "paused" {
                    break;
                }
                let limit = backrest::long_timeout(&self.cfg);
                if t0.elapsed() > limit {
                    bail!(
                        "the point-in-time recovery did not reach its target in {} h \
                         (backup.timeout_hours)",
                        limit.as_secs() / 3600
                    );
                }
                if said.elapsed() > Duration::from_secs(10) {
                    info!(
                        "point-in-time recovery: replayed up to {}",
                        replayed(client).await?
                    );
                    said = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            info!(
                "point-in-time recovery reached its target at {}: promoting",
                replayed(client).await?
            );
            let done: bool = client
                .query_one("SELECT pg_promote(true, 60)", &[])
                .await
                .context("promote the restored PostgreSQL")?
                .get(0);
            if !done {
                // PostgreSQL also pauses, and refuses promotion, when a setting is lower
                // than on the cluster the backup came from; its log says which.
                let why = pgbaton_pg::server::log_lines_matching(
                    &self.cfg.log_file(),
                    &[
                        "insufficient parameter settings",
                        "is a lower setting than on the primary",
                    ],
                );
                bail!(
                    "the restored PostgreSQL did not finish its promotion within 60 s{}",
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ": {}. Set those parameters in [postgresql.parameters] at least as high as on the cluster the backup came from",
                            why.join("; ")
                        )
                    }
                );
            }
        }
        if backrest::forget_recovery_settings(&self.cfg.data_dir)? {
            info!("took pgBackRest's recovery settings out of postgresql.auto.conf");
        }
        Ok(())
    }
}

/// How far recovery has replayed (`pg_last_wal_replay_lsn`), for the log.
async fn replayed(client: &tokio_postgres::Client) -> Result<String> {
    let lsn: Option<String> = client
        .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
        .await?
        .get(0);
    Ok(lsn.unwrap_or_default())
}

/// Restore into a scratch directory beside `data`, moved into place only when complete, so
/// an interrupted restore never leaves a half-written data directory behind (the scratch
/// directory carries a marker; only one with it is ever removed, to try again).
async fn restore_via_scratch(
    br: &BackRest,
    data: &std::path::Path,
    target: &Target,
    set: Option<&str>,
) -> Result<()> {
    let scratch = scratch_dir(data);
    let mark = scratch.with_extension("pgbaton-restore.incomplete");
    if scratch.exists() {
        if !mark.exists() {
            bail!(
                "{} exists and was not made by an interrupted pgbaton restore: move it away",
                scratch.display()
            );
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "an interrupted pgbaton restore, proven by its marker file"
        )]
        tokio::fs::remove_dir_all(&scratch)
            .await
            .with_context(|| format!("remove the incomplete restore {}", scratch.display()))?;
    }
    std::fs::write(
        &mark,
        b"an interrupted pgbaton restore: safe to delete with the directory beside it\n",
    )
    .with_context(|| format!("write {}", mark.display()))?;
    files::ensure_dir(&scratch, 0o700)?;
    br.restore(&scratch, false, target, set).await?;
    if *target != Target::None {
        // pgBackRest's restore_command names the scratch directory.
        br.set_restore_command(&scratch)?;
    }
    if data.exists() {
        std::fs::remove_dir(data)
            .with_context(|| format!("replace the empty data directory {}", data.display()))?;
    }
    std::fs::rename(&scratch, data)
        .with_context(|| format!("move the restored copy into {}", data.display()))?;
    let _ = std::fs::remove_file(&mark);
    Ok(())
}

fn scratch_dir(data: &std::path::Path) -> std::path::PathBuf {
    let mut s = data.as_os_str().to_owned();
    s.push(".pgbaton-restore");
    std::path::PathBuf::from(s)
}

/// `[bootstrap]` is read only when a cluster is made: a cluster whose own stanza records it
/// as owner was made already (pgbaton records it after the promotion). Restoring the old
/// point in time again would make a cluster with the same system identifier as the one
/// running, which its members would then be rewound to. The check at start refuses the
/// same (`backup::made_already`); this one stands for a stanza pgBackRest lists no
/// database in. Without `[backup]` nothing durable records it: the decision's rule that an
/// empty member waits for a live member with data is the only guard.
fn refuse_a_second_bootstrap(cfg: &pgbaton_core::config::NodeConfig) -> Result<()> {
    let Some(b) = &cfg.backup else {
        return Ok(());
    };
    let stanza = b.stanza_or(&cfg.cluster);
    if backrest::stanza_owner(&b.repo_path, stanza).as_deref() == Some(cfg.cluster.as_str()) {
        return Err(crate::backup::made_already(cfg));
    }
    Ok(())
}
