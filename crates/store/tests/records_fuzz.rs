//! Fuzzing the store record decoders (proptest; `PROPTEST_CASES` raises the bound): any text
//! under any of the cluster's keys, as another program or a newer version might leave it,
//! is read as data or a clear error, never a panic. An unreadable member record never fails
//! the read (it is reported); the other members are still read. Failing cases are kept in
//! `records_fuzz.proptest-regressions`.

use pgbaton_core::model::{MemberState, MemberStatus, Role};
use pgbaton_store::local::LocalStore;
use pgbaton_store::{read_view, MembersRead, Store};
use proptest::prelude::*;

const KEYS: &[&str] = &[
    "initialize",
    "leader",
    "members/n2",
    "members/n3",
    "op",
    "paused",
    "sync",
    "history/00000000000000000001",
];

/// Text as a record might hold it: JSON of the right shape with a field changed, JSON of
/// another shape, or anything.
fn record() -> impl Strategy<Value = String> {
    let member = serde_json::to_value(MemberState::sample(
        "n2",
        Role::Standby,
        MemberStatus::Streaming,
        1,
    ))
    .unwrap();
    let fields: Vec<String> = member.as_object().unwrap().keys().cloned().collect();
    prop_oneof![
        "\\PC{0,80}",
        (prop::sample::select(fields), any::<i64>(), "[a-z_]{0,12}").prop_map(move |(f, n, s)| {
            let mut m = member.clone();
            m[f.as_str()] = if n % 2 == 0 {
                serde_json::json!(s)
            } else {
                serde_json::json!(n)
            };
            m.to_string()
        }),
        Just("{}".to_string()),
        Just("null".to_string()),
        Just("[1,2]".to_string()),
        Just("{\"member\":\"n1\",\"expires_ms\":-1}".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn any_record_text_is_read_or_refused_never_a_panic(
        writes in prop::collection::vec((prop::sample::select(KEYS), record()), 1..6)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = LocalStore::open(&path, "c").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(store.member_put(&MemberState::sample("n1", Role::Primary, MemberStatus::Running, 1)))
            .unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        for (key, text) in &writes {
            conn.execute(
                "INSERT OR REPLACE INTO kv (cluster, key, value) VALUES ('c', ?1, ?2)",
                rusqlite::params![key, text],
            )
            .unwrap();
        }
        // Members: never an error; n1 (untouched) is always read.
        let read = rt.block_on(store.members_read()).unwrap();
        prop_assert!(read.members.iter().any(|m| m.name == "n1"));
        for u in &read.unreadable {
            prop_assert!(u.member().is_some_and(|m| u.why.contains(m)), "{:?}", u);
        }
        // The whole view: data or an error that says what, never a panic.
        if let Err(e) = rt.block_on(read_view(&store)) {
            let text = format!("{e:#}");
            prop_assert!(!text.is_empty());
        }
        let _ = rt.block_on(store.history(10));
        let _ = MembersRead::from_records(writes.iter().map(|(k, t)| (k.to_string(), t.clone())).collect(), "x");
    }
}
