//! The HTTPS REST API under `/api/v1`: routing, authentication, object CRUD,
//! params, the event stream and the OpenAPI document.
//!
//! Handlers translate HTTP into store commands and reads; they hold no state
//! of their own. Every route but `/ca`, `/openapi.json` and `/auth/token`
//! needs a bearer token.

pub mod auth;
pub mod cluster;
pub mod error;
pub mod events;
pub mod listener;
pub mod objects;
pub mod openapi;
pub mod params;
pub mod status;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;

use crate::config::ServerSettings;
use crate::store::Store;

pub use error::{ApiError, ApiResult, ErrorBody};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub settings: Arc<ServerSettings>,
    /// The CA certificate (PEM) clients pin.
    pub ca_pem: Arc<String>,
    /// Unix seconds now; injectable so tests can move time.
    pub clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl AppState {
    pub fn new(store: Store, settings: Arc<ServerSettings>, ca_pem: String) -> Self {
        AppState {
            store,
            settings,
            ca_pem: Arc::new(ca_pem),
            clock: Arc::new(unix_now),
        }
    }

    pub fn now(&self) -> u64 {
        (self.clock)()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn router(state: AppState) -> Router {
    let max_body = state.settings.max_body_bytes;
    let authenticated = Router::new()
        .route("/status", get(status::status))
        .route("/auth/whoami", get(auth::whoami))
        .route(
            "/cluster/tokens",
            get(cluster::list_tokens).post(cluster::create_token),
        )
        .route("/cluster/tokens/{id}", delete(cluster::revoke_token))
        .route("/cluster/nodes", get(cluster::list_nodes))
        .route("/cluster/nodes/{id}", delete(cluster::remove_node))
        .route("/events", get(events::stream))
        .route("/machines/{key}/effective-params", get(params::effective))
        .route("/{kind}/{key}/params", get(params::list))
        .route(
            "/{kind}/{key}/params/{name}",
            get(params::get_one).put(params::set).delete(params::remove),
        )
        .route("/{kind}", get(objects::list).post(objects::create))
        .route(
            "/{kind}/{key}",
            get(objects::show)
                .put(objects::replace)
                .patch(objects::patch)
                .delete(objects::delete),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let public = Router::new()
        .route("/ca", get(auth::ca))
        .route("/openapi.json", get(openapi::document))
        .route("/auth/token", post(auth::issue_token))
        .route("/cluster/join", post(cluster::join));
    Router::new()
        .nest("/api/v1", public.merge(authenticated))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Turns the framework's own plain-text rejections (body too large, method
/// not allowed, unparsable path) into the API's JSON errors, so every error
/// a client sees has a stable code.
async fn json_errors(response: axum::response::Response) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse as _;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::NOT_FOUND => "not_found",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_string();
    }
    let mut json = ApiError::new(status, code, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}
