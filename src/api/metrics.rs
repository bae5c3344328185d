//! `GET /metrics`: the node's Prometheus text exposition (see
//! [`crate::metrics`]), outside `/api/v1` where scrapers look for it, behind
//! a read-scoped bearer token like every other read.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::auth::Need;
use super::AppState;
use crate::model::ScopeLevel;

/// The content type Prometheus expects for the text format with `# EOF`.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new().route(
        "/metrics",
        get(scrape).route_layer(axum::middleware::from_fn_with_state(
            (state.clone(), Need::Level(ScopeLevel::Read)),
            super::auth::guard,
        )),
    )
}

async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    let status = state.store.raft().status();
    (
        [(header::CONTENT_TYPE, OPENMETRICS_TEXT)],
        state.metrics.render(&status),
    )
}
