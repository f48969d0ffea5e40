//! Reaching a secured etcd: TLS (the servers' certificates checked against a CA, optionally
//! a client certificate) and a user, from the files `[store]` names. The files are read when
//! the store is opened, so a missing or unsafe file is an error at start.

use crate::secret::read_secret_file;
use anyhow::{bail, Context, Result};
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use pgbaton_core::config::EtcdAccess;
use std::path::{Path, PathBuf};

/// What a connection to a secured etcd needs, read from the files.
#[derive(Clone, Default)]
pub(super) struct Secured {
    tls: Option<TlsOptions>,
    user: Option<(String, String)>,
    /// For errors: the CA file the servers are checked against, and the user.
    pub(super) ca_file: Option<PathBuf>,
    pub(super) username: Option<String>,
}

/// A PEM file's bytes; refused when it holds no PEM block of `what`.
fn read_pem(path: &Path, key: &str, what: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {} ({key})", path.display()))?;
    if !String::from_utf8_lossy(&bytes).contains(&format!("-----BEGIN {what}")) {
        bail!(
            "{} ({key}) holds no PEM {what}: expected a file starting with \"-----BEGIN {what}\"",
            path.display()
        );
    }
    Ok(bytes)
}

impl Secured {
    pub(super) fn load(access: &EtcdAccess) -> Result<Secured> {
        let mut out = Secured {
            ca_file: access.ca_file.clone(),
            username: access.username.clone(),
            ..Default::default()
        };
        if let Some(ca) = &access.ca_file {
            let pem = read_pem(ca, "store.ca_file", "CERTIFICATE")?;
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(pem));
            if let (Some(cert), Some(key)) = (&access.cert_file, &access.key_file) {
                let cert = read_pem(cert, "store.cert_file", "CERTIFICATE")?;
                let key_text = read_secret_file(key, "store.key_file")?;
                if !key_text.contains("PRIVATE KEY-----") {
                    bail!(
                        "{} (store.key_file) holds no PEM private key",
                        key.display()
                    );
                }
                tls = tls.identity(Identity::from_pem(cert, key_text));
            }
            out.tls = Some(tls);
        }
        if let (Some(user), Some(file)) = (&access.username, &access.password_file) {
            let text = read_secret_file(file, "store.password_file")?;
            let password = text.trim_end_matches(['\n', '\r']).to_string();
            if password.is_empty() {
                bail!(
                    "{} (store.password_file) is empty: write the password of etcd user {user} in it",
                    file.display()
                );
            }
            out.user = Some((user.clone(), password));
        }
        Ok(out)
    }

    /// `options` with the TLS settings and the user.
    pub(super) fn apply(&self, mut options: ConnectOptions) -> ConnectOptions {
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        if let Some((u, p)) = &self.user {
            // A token that expires (etcd's JWT tokens) is renewed instead of failing a call.
            options = options
                .with_user(u.clone(), p.clone())
                .with_auto_token_refresh(true);
        }
        options
    }

    /// What to check, added to an error connecting: the CA file on a certificate problem,
    /// the user on a refused authentication.
    pub(super) fn hint(&self, error: &str) -> Option<String> {
        let e = error.to_ascii_lowercase();
        if e.contains("authentication failed") || e.contains("invalid auth token") {
            return Some(match &self.username {
                Some(u) => {
                    format!("etcd refused user {u}: check store.username and store.password_file")
                }
                None => "etcd requires a user: set store.username and store.password_file".into(),
            });
        }
        if e.contains("user name is empty") || e.contains("user name not found") {
            return Some(
                "etcd has authentication on: set store.username and store.password_file".into(),
            );
        }
        // Only a certificate or handshake problem: a refused connection is not the CA's.
        let tls_problem = ["certificate", "unknownissuer", "handshake", "alert"]
            .iter()
            .any(|w| e.contains(w));
        match (&self.ca_file, tls_problem) {
            (Some(ca), true) => Some(format!(
                "is the etcd servers' certificate signed by store.ca_file {} and issued for the \
                 endpoint's host name or address (and, with --client-cert-auth, is \
                 store.cert_file signed by a CA etcd trusts)?",
                ca.display()
            )),
            _ => None,
        }
    }
}
