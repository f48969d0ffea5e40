//! TLS files as the agent watches them. `[postgresql.tls]`: PostgreSQL reads its
//! certificate, key and CA again at each reload, so a renewed certificate takes effect
//! without a restart once the agent sees a file change (its size or modification time) and
//! reloads. `[api.tls]`: the agent builds its API's TLS and its client for the other
//! members again (a member certificate that expired before the agent restarted would fail
//! every failsafe round: review finding).

use super::*;
use std::time::SystemTime;

/// What the TLS files looked like when last checked.
#[derive(Default)]
pub(crate) struct TlsWatch {
    seen: Option<Vec<Option<(SystemTime, u64)>>>,
    checked_at: Option<std::time::Instant>,
}

/// How often the files are looked at: a renewed certificate is not urgent, and looking every
/// loop was a fair part of an idle agent's system calls (three `stat`s each time).
const CHECK_EVERY: Duration = Duration::from_secs(2);

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
    /// Whether `files` changed since they were last looked at (never the first time), looking
    /// at most once every [`CHECK_EVERY`].
    pub(crate) fn changed(&mut self, files: &[&std::path::Path]) -> bool {
        if files.is_empty() || self.checked_at.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            return false;
        }
        self.checked_at = Some(std::time::Instant::now());
        let now: Vec<_> = files
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
        let files = match &self.cfg.postgresql.tls {
            Some(t) => vec![
                t.cert_file.as_path(),
                t.key_file.as_path(),
                t.ca_file.as_path(),
            ],
            None => vec![],
        };
        if !self.tls.changed(&files) || fence::postmaster_of(&self.cfg.data_dir).is_none() {
            return;
        }
        match pgbaton_exec::Postgres::reload(&mut self.exec.pg).await {
            Ok(()) => info!("TLS files changed: PostgreSQL reloaded them"),
            Err(e) => warn!("TLS files changed, and reloading PostgreSQL failed: {e:#}"),
        }
    }
}

impl Agent {
    /// Build the API's TLS and the client for the other members' APIs again when the
    /// `[api.tls]` files changed; a file that does not load keeps the old ones (and says so).
    pub(crate) fn reload_api_tls_on_change(&mut self) {
        let Some(t) = self.cfg.api.tls.clone() else {
            return;
        };
        if !self
            .api_tls_watch
            .changed(&[&t.cert_file, &t.key_file, &t.ca_file])
        {
            return;
        }
        let timeout = Duration::from_millis(self.cfg.timing.loop_interval_ms.clamp(100, 1000));
        match (api::tls::acceptor(&t), api::tls::client(Some(&t), timeout)) {
            (Ok(acceptor), Ok(http)) => {
                if let Some(shared) = &self.api_tls {
                    *shared.write().unwrap_or_else(|e| e.into_inner()) = acceptor;
                }
                *self.http.write().unwrap_or_else(|e| e.into_inner()) = http;
                info!(
                    "API TLS files changed: the API serves them, the failsafe client presents them"
                );
            }
            (Err(e), _) | (_, Err(e)) => {
                warn!("API TLS files changed but do not load ({e:#}): keeping the ones in use")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_seen_at_the_next_look_not_before() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("n1.crt");
        std::fs::write(&f, "one").unwrap();
        let mut w = TlsWatch::default();
        assert!(!w.changed(&[&f]), "the first look sees no change");
        std::fs::write(&f, "renewed").unwrap();
        assert!(!w.changed(&[&f]), "looked again too soon");
        w.checked_at = Some(std::time::Instant::now() - CHECK_EVERY);
        assert!(w.changed(&[&f]), "the renewed file is seen");
        w.checked_at = Some(std::time::Instant::now() - CHECK_EVERY);
        assert!(!w.changed(&[&f]), "and only once");
    }
}
