use super::*;

fn row(
    name: &str,
    vartype: VarType,
    context: &str,
    unit: Option<&str>,
    range: Option<(f64, f64)>,
) -> Setting {
    Setting {
        name: name.into(),
        vartype,
        context: context.into(),
        unit: unit.map(str::to_string),
        min: range.map(|r| r.0),
        max: range.map(|r| r.1),
        enumvals: vec![],
    }
}

/// Rows as PostgreSQL 15's `pg_settings` has them.
fn catalogue() -> Catalogue {
    let mut sync = row("synchronous_commit", VarType::Enum, "user", None, None);
    sync.enumvals = ["local", "remote_write", "remote_apply", "on", "off"]
        .map(String::from)
        .to_vec();
    Catalogue::new(
        vec![
            row(
                "shared_buffers",
                VarType::Integer,
                "postmaster",
                Some("8kB"),
                Some((16.0, 1073741823.0)),
            ),
            row(
                "work_mem",
                VarType::Integer,
                "user",
                Some("kB"),
                Some((64.0, 2147483647.0)),
            ),
            row(
                "statement_timeout",
                VarType::Integer,
                "user",
                Some("ms"),
                Some((0.0, 2147483647.0)),
            ),
            row(
                "random_page_cost",
                VarType::Real,
                "user",
                None,
                Some((0.0, 1.79769e308)),
            ),
            row("autovacuum", VarType::Bool, "sighup", None, None),
            row("search_path", VarType::String, "user", None, None),
            row(
                "block_size",
                VarType::Integer,
                "internal",
                None,
                Some((8192.0, 8192.0)),
            ),
            row(
                "max_connections",
                VarType::Integer,
                "postmaster",
                None,
                Some((1.0, 262143.0)),
            ),
            sync,
        ],
        "15.18",
    )
}

fn s(v: &str) -> ParamValue {
    ParamValue::Str(v.into())
}

fn node() -> crate::config::NodeConfig {
    crate::config::NodeConfig::from_toml_str(
        "cluster = \"c\"\nname = \"n1\"\ndata_dir = \"/tmp/d\"\n\n[store]\nkind = \"local\"\npath = \"/tmp/s.db\"\n",
        std::path::Path::new("node.toml"),
    )
    .unwrap()
}

fn params(p: &[(&str, ParamValue)]) -> Contents {
    Contents {
        parameters: p.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        settings: BTreeMap::new(),
    }
}

fn record(c: Contents) -> ClusterConfig {
    ClusterConfig::default().next(c, 1000, "me@host")
}

#[test]
fn values_postgresql_takes_pass() {
    let c = catalogue();
    for (k, v) in [
        ("work_mem", s("64MB")),
        ("work_mem", s("65536")),
        ("work_mem", ParamValue::Int(4096)),
        ("shared_buffers", s("256MB")),
        ("shared_buffers", s("1GB")),
        ("shared_buffers", s("128kB")),
        ("statement_timeout", s("30s")),
        ("statement_timeout", s("5 min")),
        ("statement_timeout", s("0")),
        ("random_page_cost", s("1.1")),
        ("random_page_cost", ParamValue::Float(1.5)),
        ("autovacuum", s("off")),
        ("autovacuum", s("TRUE")),
        ("autovacuum", ParamValue::Bool(true)),
        ("synchronous_commit", s("remote_apply")),
        ("synchronous_commit", s("OFF")),
        ("search_path", s("\"$user\", public")),
        ("pg_stat_statements.track", s("all")),
    ] {
        assert_eq!(c.check(k, &v), Ok(()), "{k} = {v:?}");
    }
}

#[test]
fn bad_values_are_refused_naming_the_key_the_value_and_what_is_taken() {
    let c = catalogue();
    let e = c.check("shared_buffers", &s("banana")).unwrap_err();
    assert_eq!(e.key, "postgresql.parameters.shared_buffers");
    assert_eq!(e.value, "\"banana\"");
    assert!(
        e.expected
            .contains("an integer with an optional unit (B, kB, MB, GB, TB)"),
        "{e}"
    );
    assert!(e.expected.contains("from 16 to 1073741823 (in 8kB)"), "{e}");
    // Below the minimum once converted: 64 kB is 8 buffers.
    assert!(c.check("shared_buffers", &s("64kB")).is_err());
    assert!(c.check("work_mem", &s("10TB")).is_err());
    assert!(c.check("work_mem", &s("64 furlongs")).is_err());
    assert!(
        c.check("work_mem", &s("1.5")).is_err(),
        "an integer without a unit"
    );
    assert!(
        c.check("statement_timeout", &s("5MB")).is_err(),
        "a memory unit on a time"
    );
    assert!(c
        .check("max_connections", &s("10MB"))
        .unwrap_err()
        .expected
        .contains("takes no unit"));
    assert!(c.check("autovacuum", &s("maybe")).is_err());
    assert!(
        c.check("autovacuum", &s("o")).is_err(),
        "o is a prefix of on and off"
    );
    let e = c.check("synchronous_commit", &s("sometimes")).unwrap_err();
    assert!(
        e.expected
            .contains("one of local, remote_write, remote_apply, on, off"),
        "{e}"
    );
    let e = c.check("work_mam", &s("1MB")).unwrap_err();
    assert!(
        e.expected
            .contains("PostgreSQL 15.18 knows (it has none named work_mam)"),
        "{e}"
    );
    let e = c.check("block_size", &s("8192")).unwrap_err();
    assert!(e.expected.contains("fixed"), "{e}");
}

#[test]
fn settings_pgbaton_owns_are_refused_with_the_key_to_use() {
    let c = catalogue();
    let none = ClusterConfig::default();
    let new = params(&[("port", s("5433"))]);
    let e = check_all(&c, &none, &new, &node(), 2).unwrap_err();
    assert!(e.expected.contains("postgresql.port"), "{e}");
    let new = params(&[("hot_standby_feedback", s("off"))]);
    let e = check_all(&c, &none, &new, &node(), 2).unwrap_err();
    assert!(e.expected.contains("node.toml"), "{e}");
    let new = params(&[("synchronous_standby_names", s("*"))]);
    let e = check_all(&c, &none, &new, &node(), 2).unwrap_err();
    assert!(e.expected.contains("replication.synchronous"), "{e}");
}

#[test]
fn a_change_says_whether_it_needs_a_restart_removals_too() {
    let c = catalogue();
    let old = record(params(&[("shared_buffers", s("256MB"))]));
    let new = params(&[("work_mem", s("64MB"))]);
    let changes = check_all(&c, &old, &new, &node(), 2).unwrap();
    let got: Vec<(String, Applies)> = changes.iter().map(|(c, a)| (c.name.clone(), *a)).collect();
    assert_eq!(
        got,
        vec![
            ("shared_buffers".to_string(), Applies::Restart),
            ("work_mem".to_string(), Applies::Reload)
        ]
    );
    assert_eq!(changes[0].0.to_string(), "- shared_buffers = '256MB'");
    assert_eq!(changes[1].0.to_string(), "+ work_mem = '64MB'");
}

#[test]
fn a_nodes_own_value_overrides_the_clusters_and_says_so() {
    let cluster = BTreeMap::from([
        ("work_mem".to_string(), s("64MB")),
        ("shared_buffers".to_string(), s("256MB")),
    ]);
    let node = BTreeMap::from([("work_mem".to_string(), s("8MB"))]);
    let e = effective(&cluster, &node);
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].name, "shared_buffers");
    assert_eq!(e[0].source, Source::Cluster);
    assert_eq!(e[1].name, "work_mem");
    assert_eq!(e[1].source, Source::Node);
    assert_eq!(e[1].value, s("8MB"));
    assert_eq!(e[1].overrides, Some(s("64MB")));
}

#[test]
fn the_record_and_the_editors_document_round_trip() {
    let mut contents = params(&[
        ("work_mem", s("64MB")),
        ("autovacuum", ParamValue::Bool(false)),
        ("random_page_cost", ParamValue::Float(1.1)),
        ("search_path", s("'it''s', public")),
        ("pg_stat_statements.max", ParamValue::Int(1000)),
        ("seq_page_cost", ParamValue::Float(1.0)),
    ]);
    contents.set("replication.synchronous=quorum").unwrap();
    contents.set("failover.max_lag_bytes=0").unwrap();
    let c = record(contents);
    assert_eq!(c.version, 1);
    assert_eq!(ClusterConfig::parse(&c.text()).unwrap(), c);
    assert_eq!(from_document(&to_document(&c)).unwrap(), c.contents());
    let file = render_file(Some(&c));
    assert!(file.contains("work_mem = '64MB'\n"), "{file}");
    assert!(file.contains("autovacuum = off\n"), "{file}");
    assert!(ClusterConfig::parse("{not json")
        .unwrap_err()
        .contains("edit-config --force --file"));
}

#[test]
fn set_arguments_and_documents_refuse_what_is_not_a_postgresql_parameter() {
    assert_eq!(
        parse_set("work_mem=64MB").unwrap(),
        ("work_mem".into(), s("64MB"))
    );
    assert_eq!(
        parse_set("postgresql.parameters.work_mem = 64MB").unwrap(),
        ("work_mem".into(), s("64MB"))
    );
    assert!(parse_set("work_mem").is_err());
    assert!(parse_set("api.listen=0.0.0.0:1")
        .unwrap_err()
        .expected
        .contains("node.toml"));
    assert!(from_document("[postgresql.parameters]\nport = 5433\n").is_err());
    assert!(from_document("[postgresql]\nport = 5433\n").is_err());
    assert!(from_document("[replication]\nuser = \"x\"\n").is_err());
    assert!(from_document("[replication]\nsynchronous = \"sometimes\"\n").is_err());
    assert!(from_document("not = [toml").is_err());
    assert_eq!(from_document("").unwrap(), Contents::default());
}

#[test]
fn pgbaton_settings_are_checked_win_over_node_toml_and_reach_the_policy() {
    let mut c = Contents::default();
    c.set("replication.synchronous=ON").unwrap();
    c.set("replication.synchronous_node_count=2").unwrap();
    c.set("replication.synchronous_strict=true").unwrap();
    c.set("failover.max_lag_bytes=4096").unwrap();
    assert_eq!(c.settings["replication.synchronous"], s("on"));
    assert_eq!(
        c.settings["replication.synchronous_node_count"],
        ParamValue::Int(2)
    );
    for bad in [
        "replication.synchronous=sometimes",
        "replication.synchronous_node_count=0",
        "replication.synchronous_strict=perhaps",
        "failover.max_lag_bytes=-1",
    ] {
        assert!(Contents::default().set(bad).is_err(), "{bad}");
    }
    // More synchronous standbys than the cluster can have: refused.
    let e = check_all(&catalogue(), &ClusterConfig::default(), &c, &node(), 1).unwrap_err();
    assert_eq!(e.key, "replication.synchronous_node_count");
    assert!(check_all(&catalogue(), &ClusterConfig::default(), &c, &node(), 2).is_ok());
    // The store's value wins over the node's, and shows where it comes from.
    let mut policy = crate::failover::Policy::from_config(&node());
    own::overlay(&c.settings, &mut policy);
    assert_eq!(policy.sync.mode, crate::sync::SyncMode::On);
    assert_eq!(
        (
            policy.sync.node_count,
            policy.sync.strict,
            policy.max_lag_bytes
        ),
        (2, true, 4096)
    );
    let e = effective_settings(&c.settings, &node());
    let sync = e
        .iter()
        .find(|e| e.name == "replication.synchronous")
        .unwrap();
    assert_eq!((sync.source, &sync.value), (Source::Cluster, &s("on")));
    assert_eq!(sync.overrides, Some(s("off")));
    let unset = effective_settings(&BTreeMap::new(), &node());
    assert!(unset.iter().all(|e| e.source == Source::Node));
    assert!(c.unset("replication.synchronous").unwrap());
    assert!(!c.unset("replication.synchronous").unwrap());
}

/// The timing settings: durations with units, held to the fence rule as a whole (with the
/// node's values for the keys the record leaves out), whole seconds on etcd, and in the
/// editor's document as a `[timing]` table.
#[test]
fn timing_settings_are_held_to_the_fence_rule_with_the_nodes_values() {
    let mut c = Contents::default();
    c.set("timing.ttl_ms=4s").unwrap();
    c.set("timing.loop_interval_ms=1000").unwrap();
    assert_eq!(c.settings["timing.ttl_ms"], ParamValue::Int(4000));
    for bad in ["timing.ttl_ms=soon", "timing.ttl_ms=-1", "timing.ttl_ms=3h"] {
        assert!(Contents::default().set(bad).is_err(), "{bad}");
    }
    let t = own::timing(&c.settings, &node()).unwrap();
    assert_eq!(
        (t.ttl_ms, t.loop_interval_ms, t.fence_margin_ms),
        (4000, 1000, 500)
    );
    assert!(check_all(&catalogue(), &ClusterConfig::default(), &c, &node(), 2).is_ok());
    // A TTL under 3 loops, and a margin that leaves the primary under two renewals: the
    // rule names the key and the bound.
    let mut short = c.clone();
    short.set("timing.ttl_ms=2500").unwrap();
    let e = check_all(&catalogue(), &ClusterConfig::default(), &short, &node(), 2).unwrap_err();
    assert_eq!(e.key, "timing.ttl_ms");
    assert!(e.expected.contains("3000"), "{}", e.expected);
    let mut margin = c.clone();
    margin.set("timing.fence_margin_ms=2500").unwrap();
    let e = check_all(&catalogue(), &ClusterConfig::default(), &margin, &node(), 2).unwrap_err();
    assert_eq!(e.key, "timing.fence_margin_ms");
    // The rule counts the node's own values: its node.toml's loop of 2 s makes 4 s too short.
    let mut slow = node();
    slow.timing.loop_interval_ms = 2000;
    let mut only_ttl = Contents::default();
    only_ttl.set("timing.ttl_ms=4000").unwrap();
    assert_eq!(
        own::timing(&only_ttl.settings, &slow).unwrap_err().key,
        "timing.ttl_ms"
    );
    // On etcd, whole seconds.
    let mut on_etcd = node();
    on_etcd.store = crate::config::StoreConfig::Etcd {
        endpoints: vec!["http://127.0.0.1:2379".into()],
        access: Default::default(),
    };
    let mut odd = Contents::default();
    odd.set("timing.ttl_ms=2500").unwrap();
    assert!(own::timing(&odd.settings, &node()).is_ok());
    let e = own::timing(&odd.settings, &on_etcd).unwrap_err();
    assert!(e.expected.contains("whole seconds"), "{}", e.expected);
    // The document round-trips the [timing] table; the policy gets the TTL.
    let doc = to_document(&ClusterConfig {
        settings: c.settings.clone(),
        ..Default::default()
    });
    assert!(
        doc.contains("[timing]\nloop_interval_ms = 1000\nttl_ms = 4000\n"),
        "{doc}"
    );
    assert_eq!(from_document(&doc).unwrap().settings, c.settings);
    let mut policy = crate::failover::Policy::from_config(&node());
    policy.set_timing(&t);
    assert_eq!(policy.ttl_ms, 4000);
    let shown = effective_settings(&c.settings, &node());
    let ttl = shown.iter().find(|e| e.name == "timing.ttl_ms").unwrap();
    assert_eq!(
        (ttl.source, ttl.overrides.clone()),
        (Source::Cluster, Some(ParamValue::Int(2500)))
    );
}
