//! Bad input: each case is a clear error naming what is wrong, a non-zero exit, and
//! nothing created or deleted.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A standalone node config in `dir` (own store), with `extra` TOML appended to its tables.
fn node_toml(dir: &Path, port: u16, postgresql_extra: &str, top_extra: &str) -> PathBuf {
    let text = format!(
        r#"cluster = "lonely"
name = "n1"
data_dir = "{dir}/n1/data"
{top_extra}
[postgresql]
port = {port}
{postgresql_extra}
[api]
listen = "127.0.0.1:{api}"

[store]
kind = "local"
path = "{dir}/store.db"
"#,
        dir = dir.display(),
        api = port + 1000,
    );
    let p = dir.join("n1.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn agent(config: &Path) -> std::process::Output {
    pgbaton(
        &["agent", "-c", config.to_str().unwrap()],
        Duration::from_secs(60),
    )
}

fn assert_refused(o: &std::process::Output, needles: &[&str]) {
    let t = text(o);
    assert!(!o.status.success(), "expected a refusal, got success:\n{t}");
    assert!(!t.contains("panicked"), "it panicked:\n{t}");
    for n in needles {
        assert!(t.contains(n), "the error should mention {n:?}:\n{t}");
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn unknown_config_key_is_refused_naming_the_key() {
    let s = scratch_for_pg();
    let cfg = node_toml(&s.path, free_port_base(1), "prot = 5432", "");
    let o = agent(&cfg);
    assert_refused(&o, &["prot", "n1.toml"]);
    assert!(!s.path.join("n1").exists(), "something was created");
    // A typo at the top level too.
    let cfg = node_toml(&s.path, free_port_base(1), "", "data_dri = \"/x\"");
    assert_refused(&agent(&cfg), &["data_dri"]);
}

#[test]
fn missing_postgresql_binaries_are_refused_with_what_to_do() {
    let s = scratch_for_pg();
    let cfg = node_toml(
        &s.path,
        free_port_base(1),
        "bin_dir = \"/nonexistent/pg/bin\"",
        "",
    );
    assert_refused(
        &agent(&cfg),
        &["bin_dir", "/nonexistent/pg/bin", "missing postgres"],
    );
    assert!(!s.path.join("n1").exists(), "something was created");
}

#[test]
fn taken_port_is_refused_by_up_and_by_the_agent() {
    let base = free_port_base(2);
    let _taken = std::net::TcpListener::bind(("127.0.0.1", base + 1)).unwrap();
    let s = scratch();
    let dir = s.path.join("cluster");
    let o = pgbaton(
        &[
            "up",
            "--dir",
            dir.to_str().unwrap(),
            "--nodes",
            "2",
            "--port-base",
            &base.to_string(),
        ],
        Duration::from_secs(60),
    );
    assert_refused(
        &o,
        &[
            &format!("port {}", base + 1),
            "already in use",
            "--port-base",
        ],
    );
    assert!(
        !dir.exists(),
        "up created {} although it refused",
        dir.display()
    );

    let s = scratch_for_pg();
    let cfg = node_toml(&s.path, base + 1, "", "");
    assert_refused(
        &agent(&cfg),
        &[&format!("port {}", base + 1), "postgresql.port"],
    );
    assert!(!s.path.join("n1").exists(), "something was created");
}

#[test]
fn unreadable_or_missing_password_file_is_refused() {
    let s = scratch_for_pg();
    let pw = s.path.join("secret.password");
    std::fs::write(&pw, "s3cret-password\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o000)).unwrap();
    let cfg = node_toml(
        &s.path,
        free_port_base(1),
        "",
        &format!("[replication]\npassword_file = \"{}\"", pw.display()),
    );
    let o = agent(&cfg);
    assert_refused(&o, &["secret.password", "replication.password_file"]);
    assert!(
        !text(&o).contains("s3cret-password"),
        "the error shows the password"
    );
    assert!(!s.path.join("n1").exists(), "something was created");

    let missing = s.path.join("nope.password");
    let cfg = node_toml(
        &s.path,
        free_port_base(1),
        "",
        &format!("[replication]\npassword_file = \"{}\"", missing.display()),
    );
    assert_refused(&agent(&cfg), &["nope.password"]);
    assert!(
        !missing.exists(),
        "a configured password file must not be invented"
    );
}

#[test]
fn data_directory_of_another_cluster_is_refused_and_untouched() {
    let c = Cluster::up(1);
    // A data directory made by another initdb: another system identifier.
    let s = scratch_for_pg();
    let foreign = s.path.join("n9").join("data");
    std::fs::create_dir_all(&foreign).unwrap();
    let u = pg_user();
    nix::unistd::chown(&s.path.join("n9"), Some(u.uid), Some(u.gid)).unwrap();
    nix::unistd::chown(&foreign, Some(u.uid), Some(u.gid)).unwrap();
    let o = run_with_timeout(
        std::process::Command::new("/usr/lib/postgresql/15/bin/initdb")
            .arg("-D")
            .arg(&foreign)
            .uid(u.uid.as_raw())
            .gid(u.gid.as_raw())
            .current_dir("/"),
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "initdb: {}", text(&o));
    let before = listing(&foreign);
    let conf_before = std::fs::read_to_string(foreign.join("postgresql.conf")).unwrap();

    let node = std::fs::read_to_string(c.dir.join("n1/node.toml")).unwrap();
    let port = free_port_base(1);
    let node = node
        .replace("name = \"n1\"", "name = \"n9\"")
        .replace(
            &format!("data_dir = \"{}\"", c.data_dir("n1").display()),
            &format!("data_dir = \"{}\"", foreign.display()),
        )
        .replace(
            &format!("port = {}", c.port_base),
            &format!("port = {port}"),
        )
        .replace(
            &format!("127.0.0.1:{}", c.port_base + 1000),
            &format!("127.0.0.1:{}", port + 1000),
        );
    assert!(
        node.contains("n9") && node.contains(foreign.to_str().unwrap()),
        "{node}"
    );
    let cfg = s.path.join("n9.toml");
    std::fs::write(&cfg, node).unwrap();
    assert_refused(&agent(&cfg), &["another cluster", "will not touch"]);
    assert_eq!(
        listing(&foreign),
        before,
        "the foreign data directory changed"
    );
    assert_eq!(
        std::fs::read_to_string(foreign.join("postgresql.conf")).unwrap(),
        conf_before
    );

    // A non-empty directory that is no data directory at all.
    #[expect(
        clippy::disallowed_methods,
        reason = "the test's own scratch directory"
    )]
    std::fs::remove_dir_all(&foreign).unwrap();
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), "keep me").unwrap();
    assert_refused(
        &agent(&cfg),
        &["not a PostgreSQL data directory", "precious.txt"],
    );
    assert_eq!(
        std::fs::read_to_string(foreign.join("precious.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(listing(&foreign), vec!["precious.txt".to_string()]);
}

#[test]
fn up_refuses_a_non_empty_directory_and_deletes_nothing() {
    let s = scratch();
    let dir = s.path.join("cluster");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("precious.txt"), "keep me").unwrap();
    let o = pgbaton(
        &[
            "up",
            "--dir",
            dir.to_str().unwrap(),
            "--port-base",
            &free_port_base(3).to_string(),
        ],
        Duration::from_secs(60),
    );
    assert_refused(&o, &["not empty"]);
    assert_eq!(listing(&dir), vec!["precious.txt".to_string()]);
}

/// Audit finding: `down --dir D --purge` deleted a directory holding a `pgbaton.toml` and
/// unrelated files, none made by `up`.
#[test]
fn down_purge_refuses_a_directory_up_did_not_make_and_deletes_nothing() {
    let s = scratch();
    let dir = s.path.join("not-ours");
    std::fs::create_dir_all(dir.join("n1")).unwrap();
    let store = dir.join("store.db");
    std::fs::write(
        dir.join("pgbaton.toml"),
        format!(
            "cluster = \"x\"\n\n[store]\nkind = \"local\"\npath = \"{}\"\n",
            store.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("precious.txt"), "keep me").unwrap();
    let o = pgbaton(
        &["down", "--dir", dir.to_str().unwrap(), "--purge"],
        Duration::from_secs(60),
    );
    assert_refused(&o, &["not made by `pgbaton up`", ".pgbaton-up"]);
    assert_eq!(
        listing(&dir),
        vec!["n1", "pgbaton.toml", "precious.txt"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    );
}

#[test]
fn up_refuses_a_directory_postgres_cannot_enter() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (PostgreSQL then runs as postgres, who cannot enter a 0700 root directory)");
        return;
    }
    let s = scratch();
    let closed = s.path.join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = closed.join("cluster");
    let o = pgbaton(
        &[
            "up",
            "--dir",
            dir.to_str().unwrap(),
            "--port-base",
            &free_port_base(3).to_string(),
        ],
        Duration::from_secs(60),
    );
    assert_refused(&o, &["postgres", "cannot enter", closed.to_str().unwrap()]);
    assert!(!dir.exists());
}

#[test]
fn an_initialize_key_pgbaton_cannot_read_is_refused_and_listed() {
    use pgbaton_store::Store;
    let s = scratch_for_pg();
    let cfg = node_toml(&s.path, free_port_base(1), "", "");
    // Text in the initialize key that is neither `claimed:<member>` nor a system identifier.
    let store_db = s.path.join("store.db");
    {
        let store = pgbaton_store::local::LocalStore::open(&store_db, "lonely").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(store.initialize_claim("junk")).unwrap());
    }
    let u = pg_user();
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let p = s.path.join(f);
        if p.exists() {
            nix::unistd::chown(&p, Some(u.uid), Some(u.gid)).unwrap();
        }
    }
    assert_refused(
        &agent(&cfg),
        &["initialize key holds \"junk\"", "will not act"],
    );
    assert!(!s.path.join("n1").exists(), "something was created");
    let o = pgbaton(
        &["-c", cfg.to_str().unwrap(), "list"],
        Duration::from_secs(30),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("Warning: the store's initialize key holds \"junk\""),
        "{t}"
    );
}

#[test]
fn commands_without_a_cluster_say_so() {
    let s = scratch();
    let cfg = s.path.join("pgbaton.toml");
    std::fs::write(
        &cfg,
        format!(
            "cluster = \"x\"\n[store]\nkind = \"local\"\npath = \"{}/store.db\"\n",
            s.path.display()
        ),
    )
    .unwrap();
    let o = pgbaton(
        &["-c", cfg.to_str().unwrap(), "list"],
        Duration::from_secs(30),
    );
    assert_refused(&o, &["store.db", "does not exist"]);
    assert!(!s.path.join("store.db").exists());
    let empty = s.path.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = pgbaton(
        &["down", "--dir", empty.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_refused(&o, &["no pgbaton cluster"]);
}

#[test]
fn an_archive_the_os_user_cannot_write_or_a_pgbaton_it_cannot_run_is_refused() {
    let s = scratch_for_pg();
    // Made by root, 0755: the postgres user cannot write into it.
    let archive = s.path.join("archive");
    std::fs::create_dir(&archive).unwrap();
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o755)).unwrap();
    let line = format!("archive_dir = \"{}\"", archive.display());
    // A pgbaton_bin the OS user can run wherever this checkout lives (the default, the test
    // binary, may be out of its reach, as in a clone under /root: that is refused too).
    let reachable = format!("{line}\npgbaton_bin = \"/bin/true\"");
    let cfg = node_toml(&s.path, free_port_base(1), &reachable, "");
    assert_refused(
        &agent(&cfg),
        &[
            "cannot write",
            &archive.display().to_string(),
            "postgresql.archive_dir",
        ],
    );
    assert!(!s.path.join("n1").exists(), "something was created");
    assert!(
        listing(&archive).is_empty(),
        "something was left in the archive"
    );

    let line = format!("{line}\npgbaton_bin = \"/nonexistent/pgbaton\"");
    let cfg = node_toml(&s.path, free_port_base(1), &line, "");
    assert_refused(
        &agent(&cfg),
        &["/nonexistent/pgbaton", "postgresql.pgbaton_bin"],
    );
    assert!(!s.path.join("n1").exists(), "something was created");
}

/// `[backup]` refused at start with nothing created: a pgBackRest that is not there, a
/// repository the OS user cannot write, and a repository holding another database's stanza.
#[test]
fn a_missing_pgbackrest_an_unwritable_repository_or_another_clusters_stanza_is_refused() {
    let s = scratch_for_pg();
    let with_backup = |repo: &Path, extra: &str| {
        let cfg = node_toml(&s.path, free_port_base(1), "", "");
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text.push_str(&format!(
            "\n[backup]\nengine = \"pgbackrest\"\nrepo_path = \"{}\"\n{extra}",
            repo.display()
        ));
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let mine = s.path.join("repo");
    std::fs::create_dir(&mine).unwrap();
    let u = pg_user();
    nix::unistd::chown(&mine, Some(u.uid), Some(u.gid)).unwrap();
    let cfg = with_backup(&mine, "bin = \"/nonexistent/pgbackrest\"\n");
    assert_refused(&agent(&cfg), &["/nonexistent/pgbackrest", "backup.bin"]);
    assert!(!s.path.join("n1").exists(), "something was created");

    // Made by root, 0755: the postgres user cannot write into it.
    let roots = s.path.join("roots");
    std::fs::create_dir(&roots).unwrap();
    std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = with_backup(&roots, "");
    assert_refused(
        &agent(&cfg),
        &[
            "cannot write",
            &roots.display().to_string(),
            "backup.repo_path",
        ],
    );
    assert!(listing(&roots).is_empty(), "something was left in it");
    let cfg = with_backup(&s.path.join("missing"), "");
    assert_refused(&agent(&cfg), &["does not exist", "backup.repo_path"]);

    // Another cluster's repository, under the stanza this one would use.
    let other = Cluster::up_with(1, &["--backup"]);
    let theirs = other.dir.join("backup");
    let before = listing(&theirs.join("backup/pgbaton"));
    let cfg = with_backup(&theirs, "stanza = \"pgbaton\"\n");
    assert_refused(
        &agent(&cfg),
        &[
            "belongs to cluster pgbaton",
            "this is cluster lonely",
            "backup.stanza",
        ],
    );
    // Without pgbaton's record of the owner (a stanza made by hand), by the database.
    let owner = theirs.join(".pgbaton-stanza-pgbaton");
    let record = std::fs::read(&owner).unwrap();
    std::fs::remove_file(&owner).unwrap();
    assert_refused(
        &agent(&cfg),
        &["already holds stanza pgbaton", "backup.stanza"],
    );
    std::fs::write(&owner, record).unwrap();
    assert!(!s.path.join("n1").exists(), "something was created");
    assert_eq!(listing(&theirs.join("backup/pgbaton")), before);

    // pgBackRest's TLS server ([backup.server]) on a port another process holds.
    let tls = s.path.join("tls");
    let o = pgbaton(
        &[
            "certs",
            "--dir",
            tls.to_str().unwrap(),
            "--member",
            "n1",
            "--host",
            "localhost",
        ],
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{}", text(&o));
    nix::unistd::chown(&tls.join("n1.key"), Some(u.uid), Some(u.gid)).unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let cfg = with_backup(
        &mine,
        &format!(
            "[backup.server]\nhost = \"localhost\"\nport = {taken}\n\
             [postgresql.tls]\ncert_file = \"{t}/n1.crt\"\nkey_file = \"{t}/n1.key\"\nca_file = \"{t}/ca.crt\"\n",
            t = tls.display()
        ),
    );
    assert_refused(
        &agent(&cfg),
        &[&format!("127.0.0.1:{taken} is taken"), "backup.server.port"],
    );
    assert!(!s.path.join("n1").exists(), "something was created");
    drop(holder);
}
