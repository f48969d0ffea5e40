//! A short fault campaign in synchronous mode (CI): no acknowledged commit lost, never two
//! writers, healthy again after every round. The README reports the long campaigns.

use std::process::Command;
use std::time::Duration;

/// A port base with the 3 PostgreSQL ports and the 3 API ports (base + 1000) free.
fn free_port_base() -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let start = 30_000 + (std::process::id() % 500) as u16 * 7;
    (start..start + 3_000)
        .step_by(7)
        .find(|&b| (0..3).all(|i| free(b + i) && free(b + 1000 + i)))
        .expect("a free port range")
}

#[test]
fn a_short_synchronous_chaos_campaign_loses_nothing() {
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_pgbaton-bench"));
    let pgbaton = bench.with_file_name("pgbaton");
    assert!(
        pgbaton.exists(),
        "{} is missing: build the workspace (cargo test --workspace builds it)",
        pgbaton.display()
    );
    let port = free_port_base().to_string();
    let mut cmd = Command::new(bench);
    cmd.args([
        "chaos",
        "--rounds",
        "5",
        "--synchronous",
        "on",
        "--seed",
        "7",
    ])
    .args(["--port-base", &port, "--pgbaton"])
    .arg(&pgbaton);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pgbaton-bench");
    // Bounded: 5 rounds take about a minute; a stuck round gives up after 240 s by itself.
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(Duration::from_secs(900)) else {
        // End it and the cluster it made (its own directory, named by its pid).
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        let dir = std::env::temp_dir().join(format!("pgbaton-bench-{pid}/c"));
        let _ = Command::new(&pgbaton)
            .args(["down", "--purge", "--dir"])
            .arg(&dir)
            .status();
        panic!("the campaign did not finish within 15 minutes");
    };
    let out = out.expect("pgbaton-bench ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the campaign failed:\n{text}");
    let last = text
        .lines()
        .find(|l| l.starts_with("chaos: "))
        .unwrap_or_else(|| panic!("no summary line:\n{text}"));
    assert_eq!(
        last, "chaos: 5 rounds, 0 lost, 0 two-writer moments, 0 rounds not healthy again",
        "{text}"
    );
}
