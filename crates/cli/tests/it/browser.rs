//! The status page at `/`, rendered by a real browser: Debian's Chromium, headless. The
//! page's JavaScript fetches `/cluster` and `/history` and builds the DOM; `--dump-dom`
//! gives that DOM after the scripts ran, and `--screenshot` what a person would see
//! (saved to `target/status-page.png` for a developer to look at).

use crate::harness::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium_present() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the status page test needs Debian's chromium package \
         (scripts/install-deps.sh installs it: apt-get install chromium)"
    );
}

/// Run headless Chromium on `url` with `extra` flags, in a fresh profile, bounded.
fn chromium(url: &str, extra: &[&str]) -> Output {
    let profile = scratch();
    let user_data = format!("--user-data-dir={}", profile.path.display());
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        "--virtual-time-budget=6000",
        &user_data,
    ])
    .args(extra)
    .arg(url)
    // Its caches and crash reports go to the scratch profile, not to the user's home.
    .env("HOME", &profile.path)
    .env("XDG_CONFIG_HOME", profile.path.join("config"))
    .env("XDG_CACHE_HOME", profile.path.join("cache"));
    let o = run_with_timeout(&mut cmd, Duration::from_secs(90));
    assert!(
        o.status.success(),
        "chromium {extra:?} {url} failed ({}):\n{}",
        o.status,
        text(&o)
    );
    o
}

fn dump_dom(url: &str) -> String {
    let o = chromium(url, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        dom.contains("</html>"),
        "chromium printed no DOM for {url}:\n{}",
        text(&o)
    );
    dom
}

/// The outer HTML of the element with `id` (tags counted by name, as serialized).
fn element<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in the DOM:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let tag: String = dom[start + 1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut depth = 0usize;
    let mut i = start;
    loop {
        let next_open = dom[i..]
            .match_indices(&open)
            .map(|(k, _)| i + k)
            .find(|&k| {
                matches!(
                    dom.as_bytes().get(k + open.len()),
                    Some(b' ' | b'>' | b'/' | b'\n')
                )
            });
        let next_close = dom[i..]
            .find(&close)
            .map(|k| i + k)
            .unwrap_or_else(|| panic!("#{id} <{tag}> is not closed in the DOM"));
        match next_open {
            Some(o) if o < next_close => {
                depth += 1;
                i = o + open.len();
            }
            _ => {
                depth -= 1;
                i = next_close + close.len();
                if depth == 0 {
                    return &dom[start..i];
                }
            }
        }
    }
}

/// The `<tr>` of `tbody` whose attributes include `attr`.
fn row<'a>(tbody: &'a str, attr: &str) -> &'a str {
    let at = tbody
        .find(attr)
        .unwrap_or_else(|| panic!("no row with {attr} in:\n{tbody}"));
    let start = tbody[..at].rfind("<tr").unwrap();
    let end = at + tbody[at..].find("</tr>").unwrap() + "</tr>".len();
    &tbody[start..end]
}

/// A plain HTTP/1.0 GET: (status line and headers, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the agent API on port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer:\n{raw}"));
    (head.to_string(), body.to_string())
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

#[test]
fn the_status_page_shows_the_cluster_in_a_browser() {
    chromium_present();
    let c = Cluster::up(2);
    c.wait_healthy(Duration::from_secs(120));
    c.sql(
        None,
        "CREATE TABLE page_rows (x int); INSERT INTO page_rows VALUES (1)",
    )
    .unwrap();

    // A switchover, so that n2 leads, n1 streams from n2 and the history has an entry.
    let o = c.op(&["switchover", "--to", "n2"]);
    assert!(
        o.status.success() && text(&o).contains("switchover done"),
        "switchover failed:\n{}",
        text(&o)
    );
    c.wait_healthy(Duration::from_secs(120));
    wait_for(
        "n1 to report n2 as its upstream",
        Duration::from_secs(60),
        || c.member("n1")["upstream"] == "n2" && c.list()["leader"] == "n2",
    );

    // n1's agent (a standby's) serves the whole cluster's page.
    let api = c.port_base + 1000;
    let (head, body) = http_get(api, "/");
    let head_lc = head.to_ascii_lowercase();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(head_lc.contains("cache-control: no-store"), "{head}");
    assert!(head_lc.contains("content-type: text/html"), "{head}");
    assert!(body.contains("id=\"lag-chart\""), "{body}");

    let url = format!("http://127.0.0.1:{api}/");
    // The page shows the cluster as the agents last reported it; under load a member can
    // briefly report `starting` (a probe that did not answer in time). Wait for a healthy
    // cluster, then take the page once it shows both members settled (bounded).
    c.wait_healthy(Duration::from_secs(60));
    let mut dom = String::new();
    wait_for(
        "the page to show n2 running and n1 streaming",
        Duration::from_secs(60),
        || {
            dom = dump_dom(&url);
            let members = element(&dom, "members");
            members.contains("data-member=\"n2\"")
                && members.contains("data-member=\"n1\"")
                && row(members, "data-member=\"n2\"").contains(">running<")
                && row(members, "data-member=\"n1\"").contains(">streaming<")
        },
    );

    // Cluster and leader.
    assert!(
        element(&dom, "cluster-name").contains(">pgbaton<"),
        "{}",
        element(&dom, "cluster-name")
    );
    assert!(
        element(&dom, "leader").contains(">n2<"),
        "{}",
        element(&dom, "leader")
    );
    let banner = element(&dom, "banner");
    assert!(!banner.contains("unreachable"), "{banner}");

    // Members: one row each, with their roles and states.
    let members = element(&dom, "members");
    let n1 = row(members, "data-member=\"n1\"");
    let n2 = row(members, "data-member=\"n2\"");
    assert!(
        n2.contains("data-role=\"primary\"") && n2.contains(">primary<"),
        "{n2}"
    );
    assert!(n2.contains(">running<"), "{n2}");
    assert!(
        n1.contains("data-role=\"standby\"") && n1.contains(">standby<"),
        "{n1}"
    );
    assert!(n1.contains(">streaming<"), "{n1}");
    assert_eq!(members.matches("<tr ").count(), 2, "{members}");

    // Topology: n1 streams from n2, as an edge drawn and as text.
    let topo = element(&dom, "topology");
    assert!(
        topo.contains("data-standby=\"n1\" data-upstream=\"n2\""),
        "{topo}"
    );
    assert!(topo.contains("data-from=\"n2\" data-to=\"n1\""), "{topo}");
    assert!(topo.contains("←"), "{topo}");
    assert!(
        topo.contains("data-node=\"n1\"") && topo.contains("data-node=\"n2\""),
        "{topo}"
    );

    // Lag: a series for the standby, drawn from samples kept by the page.
    let lag = element(&dom, "lag-chart");
    assert!(lag.contains("<svg"), "{lag}");
    assert!(
        lag.contains("data-series=\"n1\""),
        "no lag drawn for n1:\n{lag}"
    );
    let legend = element(&dom, "lag-legend");
    assert!(legend.contains("data-series=\"n1\""), "{legend}");

    // History: the switchover, done.
    let history = element(&dom, "history");
    let entry = row(history, "data-operation=\"switchover\"");
    assert!(entry.contains("data-result=\"done\""), "{entry}");
    assert!(entry.contains("n1 → n2"), "{entry}");

    // No operation in flight, and a time of the last update.
    assert!(element(&dom, "operation").contains(">none<"), "{dom}");
    let updated = element(&dom, "updated");
    assert!(updated.contains("updated "), "{updated}");
    assert!(!updated.contains("never"), "{updated}");

    // What a person sees.
    let png = c.scratch.path.join("status.png");
    let shot = format!("--screenshot={}", png.display());
    chromium(&url, &[&shot, "--window-size=1280,900"]);
    let size = std::fs::metadata(&png)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()))
        .len();
    assert!(size > 10_000, "the screenshot is only {size} bytes");
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let keep = target_dir();
    std::fs::create_dir_all(&keep).unwrap();
    std::fs::copy(&png, keep.join("status-page.png")).unwrap();

    // An agent that does not answer: the page says so and keeps trying. (Loaded from a
    // file, its fetches of `cluster` and `history` fail.)
    let file = c.scratch.path.join("status.html");
    std::fs::write(&file, &body).unwrap();
    let dom = dump_dom(&format!("file://{}", file.display()));
    let banner = element(&dom, "banner");
    assert!(
        banner.contains("agent unreachable: retrying"),
        "no banner when the agent does not answer:\n{banner}"
    );
    assert!(element(&dom, "updated").contains("never updated"), "{dom}");
}
