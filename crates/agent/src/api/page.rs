//! The status page at `/` (placeholder until the page lands).

use axum::response::Html;

pub async fn index() -> Html<&'static str> {
    Html("<!doctype html><title>pgbaton</title><p>pgbaton agent</p>")
}
