//! `[postgresql.tls]` files as the agent watches them: PostgreSQL reads its certificate, key
//! and CA again at each reload, so a renewed certificate takes effect without a restart once
//! the agent sees a file change (its size or modification time) and reloads.

use super::*;
use std::time::SystemTime;

/// What the TLS files looked like when last checked.
#[derive(Default)]
pub(crate) struct TlsWatch {
    seen: Option<Vec<Option<(SystemTime, u64)>>>,
}

/// The preflight's check of the TLS files: the key is a secret (the OS user's own, 0600) and
/// the certificate and CA hold PEM certificates. Errors name the key and the file.
pub fn check_tls_files(cfg: &NodeConfig) -> Result<()> {
    let Some(t) = &cfg.postgresql.tls else {
        return Ok(());
    };
    files::read_secret_file(&t.key_file, "postgresql.tls.key_file")?;
    for (key, p) in [
        ("postgresql.tls.cert_file", &t.cert_file),
        ("postgresql.tls.ca_file", &t.ca_file),
    ] {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("read {} ({key})", p.display()))?;
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            bail!("{} ({key}) holds no PEM certificate", p.display());
        }
    }
    Ok(())
}

impl TlsWatch {
    /// Whether the TLS files changed since the last call (never on the first).
    pub(crate) fn changed(&mut self, cfg: &NodeConfig) -> bool {
        let Some(t) = &cfg.postgresql.tls else {
            return false;
        };
        let now: Vec<_> = [&t.cert_file, &t.key_file, &t.ca_file]
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect();
        let changed = self.seen.as_ref().is_some_and(|s| *s != now);
        self.seen = Some(now);
        changed
    }
}

impl Agent {
    /// Reload PostgreSQL when its TLS files changed (renewed certificates).
    pub(crate) async fn reload_on_tls_change(&mut self) {
        if !self.tls.changed(&self.cfg) || fence::postmaster_of(&self.cfg.data_dir).is_none() {
            return;
        }
        match pgbaton_exec::Postgres::reload(&mut self.exec.pg).await {
            Ok(()) => info!("TLS files changed: PostgreSQL reloaded them"),
            Err(e) => warn!("TLS files changed, and reloading PostgreSQL failed: {e:#}"),
        }
    }
}
