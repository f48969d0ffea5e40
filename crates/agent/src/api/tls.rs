//! TLS for the API (`[api.tls]`): the server's rustls configuration (its certificate, and
//! the CA client certificates must chain to with `verify_client`), and the HTTP client the
//! agent asks other members with (their certificates checked against the CA, its own
//! certificate presented, https only).

use anyhow::{bail, Context, Result};
use pgbaton_core::config::ApiTlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("read {} ({key})", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} ({key}) is not PEM", path.display()))?;
    if certs.is_empty() {
        bail!("{} ({key}) holds no PEM certificate", path.display());
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let text = pgbaton_pg::files::read_secret_file(path, "api.tls.key_file")?;
    PrivateKeyDer::from_pem_slice(text.as_bytes()).with_context(|| {
        format!(
            "{} (api.tls.key_file) holds no PEM private key",
            path.display()
        )
    })
}

/// The server side: read at start (a bad file stops the agent, naming it).
pub fn acceptor(t: &ApiTlsConfig) -> Result<tokio_rustls::TlsAcceptor> {
    let chain = certs(&t.cert_file, "api.tls.cert_file")?;
    let key = private_key(&t.key_file)?;
    let builder = rustls::ServerConfig::builder();
    let builder = if t.verify_client {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&t.ca_file, "api.tls.ca_file")? {
            roots
                .add(c)
                .with_context(|| format!("{} (api.tls.ca_file)", t.ca_file.display()))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .context("build the API's client certificate check")?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "{} and {} (api.tls.cert_file, key_file) do not make a certificate and its key",
            t.cert_file.display(),
            t.key_file.display()
        )
    })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The HTTP client for other members' APIs: no redirects (a redirect would carry the token
/// to wherever it points), `timeout` per request; with TLS, https only, the CA as the only
/// root, and this member's certificate presented.
pub fn client(tls: Option<&ApiTlsConfig>, timeout: Duration) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(t) = tls {
        b = with_tls(b, &t.ca_file, Some((&t.cert_file, &t.key_file)), "api.tls")?;
    }
    b.build()
        .context("build the HTTP client for the members' APIs")
}

/// What to check when a request to a member's API failed with `error` (its text, with its
/// sources): the CA file, when the failure is about the member's certificate.
pub fn ca_hint(error: &str, ca: Option<&Path>, key: &str) -> String {
    let e = error.to_ascii_lowercase();
    match ca {
        Some(ca) if e.contains("certificate") || e.contains("unknownissuer") => format!(
            " (is the member's API certificate signed by the CA in {} ({key}) and issued for \
             the host in its api_url?)",
            ca.display()
        ),
        _ => String::new(),
    }
}

/// `b` made https-only, trusting only the CA in `ca`, presenting `identity` (certificate,
/// key) when given. `what` names the settings in errors.
pub fn with_tls(
    b: reqwest::ClientBuilder,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    what: &str,
) -> Result<reqwest::ClientBuilder> {
    let pem = std::fs::read(ca).with_context(|| format!("read {} ({what} CA)", ca.display()))?;
    let ca_cert = reqwest::Certificate::from_pem(&pem)
        .with_context(|| format!("{} ({what} CA) is not a PEM certificate", ca.display()))?;
    let mut b = b
        .https_only(true)
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca_cert);
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert)
            .with_context(|| format!("read {} ({what} certificate)", cert.display()))?;
        pem.extend(pgbaton_pg::files::read_secret_file(key, &format!("{what} key"))?.as_bytes());
        b = b.identity(reqwest::Identity::from_pem(&pem).with_context(|| {
            format!(
                "{} and {}: not a certificate and key",
                cert.display(),
                key.display()
            )
        })?);
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, SanType,
    };
    use std::os::unix::fs::PermissionsExt;

    /// A CA in `dir` and `n` certificates it signed for 127.0.0.1 (`c0.crt`, `c0.key`, ...).
    fn pki(dir: &Path, n: usize) -> ApiTlsConfig {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "test CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        std::fs::write(dir.join("ca.crt"), p.self_signed(&ca_key).unwrap().pem()).unwrap();
        let issuer = Issuer::new(p, ca_key);
        for i in 0..n {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("c{i}.crt")), cert.pem()).unwrap();
            let kp = dir.join(format!("c{i}.key"));
            std::fs::write(&kp, key.serialize_pem()).unwrap();
            std::fs::set_permissions(&kp, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        ApiTlsConfig {
            cert_file: dir.join("c0.crt"),
            key_file: dir.join("c0.key"),
            ca_file: dir.join("ca.crt"),
            verify_client: true,
        }
    }

    /// With `verify_client`, a client without a certificate, or with one another CA signed,
    /// is refused; one with a certificate the CA signed is served.
    #[tokio::test]
    async fn verify_client_wants_a_certificate_of_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let t = pki(dir.path(), 2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/", listener.local_addr().unwrap());
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(super::super::serve::serve(
            listener,
            app,
            Some(Arc::new(std::sync::RwLock::new(acceptor(&t).unwrap()))),
        ));
        let no_cert = with_tls(reqwest::Client::builder(), &t.ca_file, None, "test")
            .unwrap()
            .build()
            .unwrap();
        assert!(
            no_cert.get(&url).send().await.is_err(),
            "served without a client certificate"
        );
        let other = ApiTlsConfig {
            cert_file: dir.path().join("c1.crt"),
            key_file: dir.path().join("c1.key"),
            ..t.clone()
        };
        // A certificate another CA signed: refused too.
        let stranger_dir = tempfile::tempdir().unwrap();
        let stranger = pki(stranger_dir.path(), 1);
        let stranger = with_tls(
            reqwest::Client::builder(),
            &t.ca_file,
            Some((&stranger.cert_file, &stranger.key_file)),
            "test",
        )
        .unwrap()
        .build()
        .unwrap();
        assert!(
            stranger.get(&url).send().await.is_err(),
            "served a certificate of another CA"
        );
        let member = client(Some(&other), Duration::from_secs(5)).unwrap();
        let r = member
            .get(&url)
            .send()
            .await
            .expect("served with a certificate of the CA");
        assert_eq!(r.status(), 200);
        // https only: the same client does not speak plain HTTP.
        let plain = url.replace("https://", "http://");
        assert!(member.get(&plain).send().await.is_err());
    }
}
