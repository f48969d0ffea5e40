//! TLS on PostgreSQL's network connections (`up --tls`, `[postgresql.tls]`): replication
//! runs over TLS, a connection without TLS is refused, a client checking against another CA
//! is refused, pgbaton's own connection with a wrong CA says which file, and a renewed
//! certificate is served after a reload, without a restart.

use crate::harness::*;
use std::process::Command;
use std::time::Duration;

fn psql_tcp(port: u16, extra: &str) -> std::process::Output {
    let conn = format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5 {extra}"
    );
    run_with_timeout(
        Command::new(format!("{PG_BIN}/psql"))
            .args(["-X", "-w", "-At", "-d", &conn, "-c", "SELECT 1"])
            .env_remove("PGPASSWORD"),
        Duration::from_secs(20),
    )
}

/// The serial number of the certificate the server on `port` presents (PostgreSQL's, after
/// its STARTTLS; with `api`, an agent's API, TLS from the first byte).
fn serial_at(port: u16, api: bool) -> String {
    let starttls = if api { "" } else { "-starttls postgres" };
    let o = run_with_timeout(
        Command::new("sh").arg("-c").arg(format!(
            "openssl s_client {starttls} -connect 127.0.0.1:{port} </dev/null 2>/dev/null \
             | openssl x509 -noout -serial"
        )),
        Duration::from_secs(20),
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn served_serial(port: u16) -> String {
    serial_at(port, false)
}

/// `pgbaton certs`: the CA in `dir` (made when missing) and `member`'s certificate.
fn certs(dir: &std::path::Path, member: &str, hosts: &[&str]) {
    let mut args = vec!["certs", "--dir", dir.to_str().unwrap(), "--member", member];
    for h in hosts {
        args.extend(["--host", h]);
    }
    let o = pgbaton(&args, Duration::from_secs(30));
    assert!(o.status.success(), "{}", text(&o));
}

fn file_serial(cert: &std::path::Path) -> String {
    let o = run_with_timeout(
        Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(cert),
        Duration::from_secs(20),
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn up_tls_encrypts_replication_and_refuses_plain_connections() {
    let c = Cluster::up_with(2, &["--tls"]);
    c.wait_healthy(Duration::from_secs(60));
    let tls = c.dir.join("tls");

    // The standby streams over TLS.
    wait_for(
        "a replication connection over TLS",
        Duration::from_secs(30),
        || {
            c.sql(
                Some("n1"),
                "SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) \
             FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
            )
            .is_ok_and(|o| o == "1/1")
        },
    );
    let conf = std::fs::read_to_string(c.data_dir("n2").join("pgbaton.conf")).unwrap();
    assert!(conf.contains("sslmode=verify-full"), "{conf}");
    let hba = std::fs::read_to_string(c.data_dir("n1").join("pg_hba.conf")).unwrap();
    assert!(!hba.lines().any(|l| l.starts_with("host ")), "{hba}");

    // Without TLS: no pg_hba line matches.
    let o = psql_tcp(c.port_base, "sslmode=disable");
    assert!(!o.status.success());
    assert!(text(&o).contains("no encryption"), "{}", text(&o));
    // With TLS, checked against the cluster's CA: the server is accepted (then a password
    // is asked for).
    let ca = tls.join("ca.crt");
    let o = psql_tcp(
        c.port_base,
        &format!("sslmode=verify-full sslrootcert={}", ca.display()),
    );
    assert!(text(&o).contains("password"), "{}", text(&o));
    // Against another CA: refused.
    let other = c.dir.join("other-ca");
    certs(&other, "x", &["127.0.0.1"]);
    let o = psql_tcp(
        c.port_base,
        &format!(
            "sslmode=verify-full sslrootcert={}",
            other.join("ca.crt").display()
        ),
    );
    assert!(
        text(&o).contains("certificate verify failed"),
        "{}",
        text(&o)
    );

    // A renewed certificate (same CA) is served once the agent sees the files change; the
    // postmaster stays the same.
    let pid = c.postmaster_pid("n1");
    let before = served_serial(c.port_base);
    assert!(
        before.starts_with("serial="),
        "no certificate served: {before:?}"
    );
    certs(&tls, "n1", &["127.0.0.1", "localhost"]);
    let pg = pg_user();
    for f in ["n1.crt", "n1.key"] {
        nix::unistd::chown(&tls.join(f), Some(pg.uid), Some(pg.gid)).unwrap();
    }
    let renewed = file_serial(&tls.join("n1.crt"));
    assert_ne!(before, renewed);
    wait_for(
        "the renewed certificate served",
        Duration::from_secs(30),
        || served_serial(c.port_base) == renewed,
    );
    assert_eq!(c.postmaster_pid("n1"), pid, "PostgreSQL was restarted");
    let log = std::fs::read_to_string(c.dir.join("n1").join("agent.log")).unwrap();
    assert!(log.contains("TLS files changed"), "{log}");
    // The API (the same files) serves the renewed certificate too, without a restart.
    let agent = c.agent_pid("n1");
    wait_for(
        "the renewed certificate served by the API",
        Duration::from_secs(30),
        || serial_at(api_port(&c, "n1"), true) == renewed,
    );
    assert_eq!(c.agent_pid("n1"), agent, "the agent was restarted");
}

#[test]
fn a_member_with_the_wrong_ca_says_which_file() {
    let c = Cluster::up_with(2, &["--tls"]);
    c.wait_healthy(Duration::from_secs(60));
    // n2 is stopped, its data removed, and it is pointed at another CA: its clone from n1
    // must fail naming that file.
    let o = c.down(false);
    assert!(o.status.success(), "{}", text(&o));
    let other = c.dir.join("other-ca");
    certs(&other, "x", &["127.0.0.1"]);
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let node = c.dir.join("n2").join("node.toml");
    let text_before = std::fs::read_to_string(&node).unwrap();
    let wrong = other.join("ca.crt");
    let edited = text_before.replace(
        &c.dir.join("tls").join("ca.crt").display().to_string(),
        &wrong.display().to_string(),
    );
    assert_ne!(edited, text_before);
    std::fs::write(&node, edited).unwrap();
    #[expect(clippy::disallowed_methods, reason = "the test's own scratch member")]
    std::fs::remove_dir_all(c.data_dir("n2")).unwrap();
    // Both agents again: n2 cannot become healthy (`up` gives up after 20 s and says so);
    // what matters is what its log says.
    let _ = pgbaton(
        &["up", "--dir", c.dir.to_str().unwrap(), "--timeout", "20"],
        Duration::from_secs(60),
    );
    wait_for(
        "n2's clone to fail naming the CA file",
        Duration::from_secs(90),
        || {
            std::fs::read_to_string(c.dir.join("n2").join("agent.log")).is_ok_and(|l| {
                l.contains("postgresql.tls.ca_file") && l.contains(&wrong.display().to_string())
            })
        },
    );
}

const ETCD_PW: &str = "the-etcd-password-of-pgbaton";

/// Users on a TLS etcd (root, and pgbaton that may read and write /pgbaton/ only), then
/// etcd's authentication on.
fn etcd_auth_on(etcd: &Etcd, tls: &std::path::Path) {
    let read = |f: &str| std::fs::read(tls.join(f)).unwrap();
    let options = etcd_client::ConnectOptions::new().with_tls(
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read("ca.crt")))
            .identity(etcd_client::Identity::from_pem(
                read("etcd.crt"),
                read("etcd.key"),
            )),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([etcd.endpoint.as_str()], Some(options))
            .await
            .expect("connect to etcd over TLS");
        c.user_add("root", ETCD_PW, None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.role_add("pgbaton").await.unwrap();
        c.role_grant_permission(
            "pgbaton",
            etcd_client::Permission::read_write("/pgbaton/").with_prefix(),
        )
        .await
        .unwrap();
        c.user_add("pgbaton", ETCD_PW, None).await.unwrap();
        c.user_grant_role("pgbaton", "pgbaton").await.unwrap();
        c.auth_enable().await.expect("enable authentication");
    });
}

fn write_0600(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// etcd with TLS (client certificates required) and authentication: `up` with a wrong
/// password is refused before anything is made, naming the user; with the right one the
/// cluster comes up and the commands work unchanged; the agents read their own copies of
/// the files (the OS user's, 0600).
#[test]
fn up_on_an_etcd_with_tls_and_a_user() {
    let s = scratch();
    let tls = s.path.join("etcd-tls");
    let etcd = Etcd::with_tls(&tls);
    etcd_auth_on(&etcd, &tls);
    let (good, wrong) = (s.path.join("etcd.password"), s.path.join("wrong.password"));
    write_0600(&good, &format!("{ETCD_PW}\n"));
    write_0600(&wrong, "not-the-password\n");
    let access = |pw: &std::path::Path| -> Vec<String> {
        let t = |f: &str| tls.join(f).to_str().unwrap().to_string();
        vec![
            "--etcd".into(),
            etcd.endpoint.clone(),
            "--etcd-ca-file".into(),
            t("ca.crt"),
            "--etcd-cert-file".into(),
            t("etcd.crt"),
            "--etcd-key-file".into(),
            t("etcd.key"),
            "--etcd-user".into(),
            "pgbaton".into(),
            "--etcd-password-file".into(),
            pw.to_str().unwrap().into(),
        ]
    };
    let refused_dir = s.path.join("refused");
    let port_base = free_port_base(1).to_string();
    let mut args = vec![
        "up",
        "--dir",
        refused_dir.to_str().unwrap(),
        "--nodes",
        "1",
        "--port-base",
        &port_base,
    ];
    let bad = access(&wrong);
    args.extend(bad.iter().map(String::as_str));
    let o = pgbaton(&args, Duration::from_secs(60));
    assert!(!o.status.success(), "up with a wrong etcd password ran");
    assert!(text(&o).contains("refused user pgbaton"), "{}", text(&o));
    assert!(
        !refused_dir.exists(),
        "up made {} anyway",
        refused_dir.display()
    );

    let right = access(&good);
    let c = Cluster::up_with(2, &right.iter().map(String::as_str).collect::<Vec<_>>());
    c.wait_healthy(Duration::from_secs(60));
    c.sql(None, "CREATE TABLE over_secure_etcd (x int)")
        .expect("the primary accepts writes");
    let node = std::fs::read_to_string(c.dir.join("n1/node.toml")).unwrap();
    let copy = c.dir.join("etcd/password");
    assert!(node.contains(copy.to_str().unwrap()), "{node}");
    use std::os::unix::fs::MetadataExt;
    for secret in [copy, c.dir.join("etcd/client.key")] {
        let meta = std::fs::metadata(&secret).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600, "{}", secret.display());
        assert_eq!(meta.uid(), pg_user().uid.as_raw(), "{}", secret.display());
    }
}

/// GET `path` from `member`'s API over https, checked against the CA in `ca`: the status,
/// or the error's text.
fn https_get(c: &Cluster, member: &str, path: &str, ca: &std::path::Path) -> Result<u16, String> {
    let url = format!("https://127.0.0.1:{}{path}", api_port(c, member));
    let pem = std::fs::read(ca).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        match client.get(&url).send().await {
            Ok(r) => Ok(r.status().as_u16()),
            Err(e) => Err(format!("{e:?}")),
        }
    })
}

/// `up` (its default: TLS everywhere) serves the agents' API over https only: plain HTTP gets no answer, a client
/// checking against another CA is refused, the CLI's requests through an agent go over
/// https, and the failsafe round of an etcd outage (members asking each other, token
/// included) does too: the primary keeps writing while etcd is frozen.
#[test]
fn up_serves_the_api_over_https_only_by_default() {
    let etcd = Etcd::new();
    let c = Cluster::up_default(3, &["--etcd", &etcd.endpoint]);
    c.wait_healthy(Duration::from_secs(60));
    let ca = c.dir.join("tls/ca.crt");
    assert_eq!(
        c.member("n2")["api_url"]
            .as_str()
            .map(|u| u.starts_with("https://")),
        Some(true)
    );

    // Plain HTTP: the connection is closed without an HTTP answer.
    assert_eq!(http("GET", api_port(&c, "n1"), "/health", &[], "").0, 0);
    // https against the cluster's CA: served.
    assert_eq!(https_get(&c, "n1", "/metrics", &ca), Ok(200));
    // Against another CA: refused.
    let other = c.dir.join("other-ca");
    certs(&other, "x", &["127.0.0.1"]);
    let e = https_get(&c, "n1", "/metrics", &other.join("ca.crt")).unwrap_err();
    assert!(
        e.contains("UnknownIssuer") || e.contains("certificate"),
        "{e}"
    );

    // The CLI through an agent's API (the token travels over TLS).
    let token = c.dir.join("api.token");
    let o = c.cmd(&["reload", "n2", "--token-file", token.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // A client config naming another CA: refused, and the error names that file.
    let conf = std::fs::read_to_string(c.config()).unwrap();
    let other_ca = other.join("ca.crt");
    assert!(conf.contains(ca.to_str().unwrap()), "{conf}");
    let wrong = c.scratch.path.join("wrong-ca.toml");
    std::fs::write(
        &wrong,
        conf.replace(ca.to_str().unwrap(), other_ca.to_str().unwrap()),
    )
    .unwrap();
    let o = pgbaton(
        &[
            "-c",
            wrong.to_str().unwrap(),
            "reload",
            "n2",
            "--token-file",
            token.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains(other_ca.to_str().unwrap()),
        "{}",
        text(&o)
    );

    // An etcd outage: the members confirm the primary to each other over https.
    c.sql(None, "CREATE TABLE w (x int)").unwrap();
    signal(etcd.pid(), nix::sys::signal::Signal::SIGSTOP);
    let start = std::time::Instant::now();
    let mut failed = None;
    while start.elapsed() < Duration::from_secs(6) && failed.is_none() {
        failed = c.sql_direct("n1", "INSERT INTO w VALUES (1)").err();
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(etcd.pid(), nix::sys::signal::Signal::SIGCONT);
    assert!(
        failed.is_none(),
        "the primary refused a write while etcd was frozen: {failed:?}"
    );
    let log = std::fs::read_to_string(c.dir.join("n1/agent.log")).unwrap();
    assert!(log.contains("other members confirm this primary"), "{log}");
}
