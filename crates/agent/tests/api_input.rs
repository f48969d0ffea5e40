//! No endpoint panics or misbehaves on malformed input: random paths, query strings,
//! methods, headers and bodies go through the real router (in process, over a real
//! embedded store). Health endpoints answer 200 or 503 only (405 for other methods).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use pgbaton_agent::api::{self, ApiState, Auth, Shared};
use pgbaton_core::config::NodeConfig;
use pgbaton_core::decide::ClusterView;
use pgbaton_core::model::{Leader, Lsn, MemberState, MemberStatus, Role};
use pgbaton_store::local::LocalStore;
use proptest::prelude::*;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tower::ServiceExt;

fn member(name: &str, role: Role, state: MemberStatus) -> MemberState {
    MemberState {
        lsn: Some(Lsn(1000)),
        system_id: Some("1".into()),
        ..MemberState::sample(name, role, state, pgbaton_store::now_ms())
    }
}

fn state(dir: &Path) -> ApiState {
    let cfg = NodeConfig::from_toml_str(
        &format!("cluster = \"c\"\nname = \"n1\"\ndata_dir = \"/x/n1/data\"\n[store]\nkind = \"local\"\npath = \"{}/s.db\"\n", dir.display()),
        Path::new("n1.toml"),
    )
    .unwrap();
    let store = Arc::new(LocalStore::open(&dir.join("s.db"), "c").unwrap());
    let me = member("n1", Role::Primary, MemberStatus::Running);
    let view = ClusterView {
        initialize: Some("1".into()),
        leader: Some(Leader {
            member: "n1".into(),
            expires_ms: pgbaton_store::now_ms() + 60_000,
        }),
        members: vec![
            me.clone(),
            member("n2", Role::Standby, MemberStatus::Streaming),
        ],
        ..ClusterView::default()
    };
    let shared = Arc::new(RwLock::new(Shared {
        member: Some(me),
        view: Some(view),
        last_loop: Some(Instant::now()),
        timing: pgbaton_core::config::TimingConfig {
            loop_interval_ms: 1000,
            ..Default::default()
        },
        ..Default::default()
    }));
    ApiState {
        shared,
        store,
        backups: Default::default(),
        cfg: Arc::new(cfg),
        auth: Auth {
            token: Some("secret".into()),
            basic: None,
        },
    }
}

const PATHS: &[&str] = &[
    "/",
    "/primary",
    "/read-write",
    "/leader",
    "/replica",
    "/read-only",
    "/sync",
    "/async",
    "/health",
    "/liveness",
    "/readiness",
    "/cluster",
    "/member",
    "/history",
    "/config",
    "/cluster-config",
    "/metrics",
    "/switchover",
    "/failover",
    "/restart",
    "/reinit",
    "/reload",
    "/nope",
    "//",
    "/replica/",
];
const METHODS: &[&str] = &["GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH"];

fn run(st: &ApiState, req: Request<Body>) -> StatusCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { api::router(st.clone()).oneshot(req).await.unwrap().status() })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn no_endpoint_panics_on_any_input(
        path in prop::sample::select(PATHS),
        method in prop::sample::select(METHODS),
        query in "[ -~]{0,40}",
        body in prop::collection::vec(any::<u8>(), 0..200),
        auth in prop::option::of("[ -~]{0,30}"),
        with_token in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let q: String = query.chars().filter(|c| !c.is_whitespace() && *c != '#').collect();
        let uri = if q.is_empty() { path.to_string() } else { format!("{path}?{q}") };
        let Ok(mut b) = Request::builder().method(method).uri(&uri).body(Body::from(body.clone())) else {
            return Ok(()); // not a request a client could send
        };
        if with_token {
            b.headers_mut().insert("authorization", "Bearer secret".parse().unwrap());
        } else if let Some(a) = auth.and_then(|a| a.parse().ok()) {
            b.headers_mut().insert("authorization", a);
        }
        let code = run(&st, b);
        prop_assert!(code != StatusCode::INTERNAL_SERVER_ERROR, "{method} {uri} -> 500");
        if pgbaton_core::health::Endpoint::from_path(path).is_some() && path != "//" {
            if matches!(method, "GET" | "HEAD" | "OPTIONS") {
                prop_assert!(code == StatusCode::OK || code == StatusCode::SERVICE_UNAVAILABLE, "{method} {uri} -> {code}");
            } else {
                prop_assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
            }
        }
        if ["/switchover", "/failover", "/restart", "/reinit", "/reload", "/pause", "/resume"].contains(&path) && method == "POST" && !with_token {
            prop_assert_eq!(code, StatusCode::UNAUTHORIZED, "{} {} without the token", method, uri);
        }
        if path == "/cluster-config" && method == "PUT" && !with_token {
            prop_assert_eq!(code, StatusCode::UNAUTHORIZED, "{} {} without the token", method, uri);
        }
    }

    #[test]
    fn malformed_operation_bodies_are_400(body in "[ -~]{1,80}") {
        prop_assume!(serde_json::from_str::<serde_json::Value>(&body).map(|v| !v.is_object()).unwrap_or(true));
        prop_assume!(!body.trim().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let req = Request::builder()
            .method("POST")
            .uri("/switchover")
            .header("authorization", "Bearer secret")
            .body(Body::from(body.clone()))
            .unwrap();
        prop_assert_eq!(run(&st, req), StatusCode::BAD_REQUEST, "{}", body);
    }
}

#[test]
fn the_primary_answers_and_a_good_request_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    let get = |p: &str| run(&st, Request::builder().uri(p).body(Body::empty()).unwrap());
    assert_eq!(get("/primary"), StatusCode::OK);
    assert_eq!(get("/replica"), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get("/metrics"), StatusCode::OK);
    assert_eq!(get("/nope"), StatusCode::NOT_FOUND);
    // The store is empty (no members registered there): a switchover is refused with 412.
    let req = Request::builder()
        .method("POST")
        .uri("/switchover")
        .header("authorization", "Bearer secret")
        .body(Body::from("{\"candidate\": \"n2\"}"))
        .unwrap();
    assert_eq!(run(&st, req), StatusCode::PRECONDITION_FAILED);
}
