//! The status page at `/`: one self-contained HTML file (inline CSS and vanilla JavaScript,
//! no external resources) that refreshes itself every 2 s from this agent's `/cluster` and
//! `/history`. It shows the cluster and its leader, the replication topology, the members,
//! a live chart of each standby's lag, the operation in progress and the recent history.
//!
//! The page inserts data with `textContent` only, never as markup.

use axum::http::header;
use axum::response::{Html, IntoResponse};

/// The page, embedded at build time.
pub const STATUS_HTML: &str = include_str!("status.html");

pub async fn index() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(STATUS_HTML))
}

#[cfg(test)]
mod tests {
    use super::STATUS_HTML;

    #[test]
    fn the_page_is_self_contained_and_has_the_ids_tests_rely_on() {
        for id in [
            "cluster-name",
            "leader",
            "members",
            "topology",
            "lag-chart",
            "history",
            "updated",
        ] {
            assert!(
                STATUS_HTML.contains(&format!("id=\"{id}\"")),
                "no element #{id}"
            );
        }
        // No external resources: nothing loaded from another origin.
        for bad in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
            let hits: Vec<_> = STATUS_HTML
                .match_indices(bad)
                .filter(|(i, _)| {
                    // The SVG namespace is an identifier, not a resource.
                    !STATUS_HTML[*i..].starts_with("http://www.w3.org/2000/svg")
                })
                .collect();
            assert!(hits.is_empty(), "the page references {bad}");
        }
        assert!(
            !STATUS_HTML.contains(".innerHTML"),
            "data must go in as text"
        );
    }
}
