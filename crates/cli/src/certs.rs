//! TLS certificates: a cluster CA and one certificate per member (rcgen, ECDSA P-256).
//! `up --tls` makes them for a local cluster; `pgbaton certs` for members on several hosts
//! (run it where the CA key is kept, then copy each member's files to its host).
//!
//! Files in DIR: `ca.crt`, `ca.key` (0600; only `certs` needs it), `<member>.crt` and
//! `<member>.key` (0600). An existing CA is reused, never replaced: replacing it would make
//! every certificate it signed untrusted at once.

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The files of one member's TLS: what `[postgresql.tls]` names.
pub struct MemberFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

const CA_YEARS: i64 = 10;
/// Two years and a bit: browsers' limit, a common rotation period.
const MEMBER_DAYS: i64 = 825;

/// Write `text` with `mode` set before any of it is written (a key is never readable by
/// others, not even for a moment).
fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    // An existing file keeps its old mode through open: set it before writing.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

/// The CA in `dir` (`ca.crt`, `ca.key`), made when both are missing. `true`: made now.
pub fn ensure_ca(dir: &Path, cluster: &str) -> Result<bool> {
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    match (crt.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        _ => bail!(
            "{} holds only one of ca.crt and ca.key: put the missing one back (a new CA would \
             not be trusted by the certificates the old one signed)",
            dir.display()
        ),
    }
    let key_pair = KeyPair::generate().context("generate the CA key")?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    // A name of its own: two CAs with one name make a certificate of the other look like
    // theirs, and the check fails with an obscure signature error ("EVP lib") instead of
    // "unable to get local issuer certificate".
    let tag = &pgbaton_pg::files::generate_password()?[..8];
    p.distinguished_name.push(
        DnType::CommonName,
        format!("pgbaton CA of cluster {cluster} ({tag})"),
    );
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(365 * CA_YEARS);
    let cert = p
        .self_signed(&key_pair)
        .context("sign the CA certificate")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    write(&key, &key_pair.serialize_pem(), 0o600)?;
    write(&crt, &cert.pem(), 0o644)?;
    Ok(true)
}

/// A certificate for `member` naming `hosts` (DNS names or IP addresses), for server and
/// client use, signed by the CA in `dir` (which must exist): `<member>.crt`, `<member>.key`.
pub fn member_cert(dir: &Path, member: &str, hosts: &[String]) -> Result<MemberFiles> {
    if hosts.is_empty() {
        bail!("a member certificate must name at least one host (--host)");
    }
    let ca_crt = dir.join("ca.crt");
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()));
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)
        .with_context(|| format!("{}: not a private key", dir.join("ca.key").display()))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_crt)?, ca_key)
        .with_context(|| format!("{}: not a CA certificate", ca_crt.display()))?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, member);
    for h in hosts {
        p.subject_alt_names
            .push(match h.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    SanType::DnsName(h.clone().try_into().with_context(|| {
                        format!("{h:?} is neither an IP address nor a DNS name")
                    })?)
                }
            });
    }
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(MEMBER_DAYS);
    let key_pair = KeyPair::generate().context("generate the member's key")?;
    let cert = p
        .signed_by(&key_pair, &issuer)
        .with_context(|| format!("sign {member}'s certificate"))?;
    let files = MemberFiles {
        cert: dir.join(format!("{member}.crt")),
        key: dir.join(format!("{member}.key")),
        ca: ca_crt,
    };
    write(&files.key, &key_pair.serialize_pem(), 0o600)?;
    write(&files.cert, &cert.pem(), 0o644)?;
    Ok(files)
}

/// `pgbaton certs`: the CA (made when missing) and a certificate for one member.
pub fn certs(dir: &Path, cluster: &str, member: &str, hosts: &[String]) -> Result<()> {
    if ensure_ca(dir, cluster)? {
        println!(
            "made the CA of cluster {cluster}: {} (keep {} safe: it signs every member)",
            dir.join("ca.crt").display(),
            dir.join("ca.key").display()
        );
    }
    let f = member_cert(dir, member, hosts)?;
    println!(
        "made {member}'s certificate for {}: copy to its host and name them in its node config:\n\n\
         [postgresql.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"   # owned by the OS user PostgreSQL runs as, mode 0600\nca_file = \"{}\"",
        hosts.join(", "),
        f.cert.display(),
        f.key.display(),
        f.ca.display()
    );
    Ok(())
}
