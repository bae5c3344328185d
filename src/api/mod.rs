//! The HTTPS REST API under `/api/v1`: routing, authentication, object CRUD,
//! params, the event stream and the OpenAPI document.
//!
//! Handlers translate HTTP into store commands and reads; they hold no state
//! of their own. Every route but `/ca`, `/openapi.json`, `/auth/token` and
//! `/cluster/join` needs a bearer token; what scope it needs is declared next
//! to the route in [`router`] (see [`auth::Need`]).

pub mod auth;
pub mod body;
pub mod cluster;
pub mod error;
pub mod events;
pub mod listener;
pub mod metrics;
pub mod objects;
pub mod openapi;
pub mod params;
pub mod status;
pub mod throttle;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;

use crate::auth::HashPool;
use crate::config::ServerSettings;
use crate::error_code as code;
use crate::model::{ObjectKind, ScopeLevel};
use crate::service::Limit;
use crate::store::Store;
use auth::Need;

/// A list waits this many times `--api-busy-wait-ms` for a list slot: lists
/// are fewer and longer than other requests.
const LIST_WAIT_FACTOR: u32 = 10;

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
    /// Password hashing and checking, bounded.
    pub hash_pool: HashPool,
    /// Rate limits on login and join.
    pub throttle: Arc<throttle::Throttle>,
    /// Requests handled at once (`--api-max-requests`).
    pub requests: Limit,
    /// Lists run at once on blocking threads (`--api-max-lists`).
    pub lists: Limit,
    /// This node's metrics, shared with its other services.
    pub metrics: crate::metrics::Metrics,
}

impl AppState {
    pub fn new(store: Store, settings: Arc<ServerSettings>, ca_pem: String) -> Self {
        let clock = settings.clock.clone();
        let busy_wait = Duration::from_millis(settings.api_busy_wait_ms);
        AppState {
            requests: Limit::new(settings.api_max_requests, busy_wait),
            lists: Limit::new(settings.api_max_lists, busy_wait * LIST_WAIT_FACTOR),
            store,
            settings,
            ca_pem: Arc::new(ca_pem),
            clock: Arc::new(move || clock.unix_now()),
            hash_pool: HashPool::new(),
            throttle: Arc::default(),
            metrics: crate::metrics::Metrics::new(),
        }
    }

    pub fn now(&self) -> u64 {
        (self.clock)()
    }
}

pub fn router(state: AppState) -> Router {
    let max_body = state.settings.max_body_bytes;
    let requests = state.requests.clone();
    // Each route with what it needs, side by side: the guard judges the
    // scope on the parameters as routed (see `auth::guard`).
    let needs = |need: Need, route: MethodRouter<AppState>| {
        route.route_layer(axum::middleware::from_fn_with_state(
            (state.clone(), need),
            auth::guard,
        ))
    };
    let api = Router::new()
        // Public by design: the CA to pin, the document, login, join.
        .route("/ca", get(auth::ca))
        .route("/openapi.json", get(openapi::document))
        .route("/auth/token", post(auth::issue_token))
        .route("/cluster/join", post(cluster::join))
        .route(
            "/status",
            needs(Need::Level(ScopeLevel::Read), get(status::status)),
        )
        .route("/auth/whoami", needs(Need::AnyToken, get(auth::whoami)))
        .route(
            "/cluster/tokens",
            needs(
                Need::Level(ScopeLevel::Admin),
                get(cluster::list_tokens).post(cluster::create_token),
            ),
        )
        .route(
            "/cluster/tokens/{id}",
            needs(
                Need::Level(ScopeLevel::Admin),
                delete(cluster::revoke_token),
            ),
        )
        .route(
            "/cluster/nodes",
            needs(Need::Level(ScopeLevel::Admin), get(cluster::list_nodes)),
        )
        .route(
            "/cluster/nodes/{id}",
            needs(Need::Level(ScopeLevel::Admin), delete(cluster::remove_node)),
        )
        .route("/events", needs(Need::Events, get(events::stream)))
        .route(
            "/machines/{key}/effective-params",
            needs(Need::Kind(ObjectKind::Machines), get(params::effective)),
        )
        .route(
            "/{kind}/{key}/params",
            needs(Need::RoutedKind, get(params::list)),
        )
        .route(
            "/{kind}/{key}/params/{name}",
            needs(
                Need::RoutedKind,
                get(params::get_one).put(params::set).delete(params::remove),
            ),
        )
        // Tokens are never replaced or patched, prefs never created or
        // deleted, leases only read and deleted (DHCP writes them; DELETE is
        // a forced release): routes of their own, so that the router answers
        // those methods with 405 and an `Allow` header naming what is there.
        .route(
            "/leases",
            needs(Need::Kind(ObjectKind::Leases), get(objects::list)),
        )
        .route(
            "/leases/{key}",
            needs(
                Need::Kind(ObjectKind::Leases),
                get(objects::show).delete(objects::delete),
            ),
        )
        .route(
            "/tokens/{key}",
            needs(
                Need::Kind(ObjectKind::Tokens),
                get(objects::show).delete(objects::delete),
            ),
        )
        .route(
            "/prefs",
            needs(Need::Kind(ObjectKind::Prefs), get(objects::list)),
        )
        .route(
            "/prefs/{key}",
            needs(
                Need::Kind(ObjectKind::Prefs),
                get(objects::show)
                    .put(objects::replace)
                    .patch(objects::patch),
            ),
        )
        .route(
            "/{kind}",
            needs(Need::RoutedKind, get(objects::list).post(objects::create)),
        )
        .route(
            "/{kind}/{key}",
            needs(
                Need::RoutedKind,
                get(objects::show)
                    .put(objects::replace)
                    .patch(objects::patch)
                    .delete(objects::delete),
            ),
        );
    Router::new()
        .nest("/api/v1", api)
        .merge(metrics::router(&state))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            max_body,
            body::bounded,
        ))
        // Outermost: a request over the cap costs nothing but its refusal.
        .layer(axum::middleware::from_fn_with_state(
            requests,
            limit_requests,
        ))
        .with_state(state)
}

/// Holds a place under `--api-max-requests` while a request is handled;
/// over the cap, waits briefly, then answers `503 busy`.
async fn limit_requests(
    axum::extract::State(requests): axum::extract::State<Limit>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match requests.acquire().await {
        Ok(_permit) => next.run(request).await,
        Err(busy) => busy_error(&busy, "requests").into_response(),
    }
}

/// `503 busy` for a request refused by a [`Limit`].
pub fn busy_error(busy: &crate::service::Busy, what: &str) -> ApiError {
    ApiError::new(
        crate::error_code::BUSY,
        format!("the node is busy ({} {what} in progress); retry", busy.max),
    )
    .retry_after(1)
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
    // The framework's own rejections, by the status it chose; the response
    // then carries the status the table gives that code.
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => code::BODY_TOO_LARGE,
        StatusCode::METHOD_NOT_ALLOWED => code::METHOD_NOT_ALLOWED,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => code::UNSUPPORTED_MEDIA_TYPE,
        StatusCode::NOT_FOUND => code::NOT_FOUND,
        StatusCode::TOO_MANY_REQUESTS => code::TOO_MANY_REQUESTS,
        StatusCode::SERVICE_UNAVAILABLE => code::UNAVAILABLE,
        s if s.is_server_error() => code::INTERNAL,
        _ => code::BAD_REQUEST,
    };
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_string();
    }
    let mut json = ApiError::new(code, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    /// Over `--api-max-requests`, a request waits the busy wait, then gets
    /// `503 busy` with `Retry-After`; once the first is done, room is back.
    #[tokio::test(start_paused = true)]
    async fn requests_over_the_cap_wait_briefly_then_are_refused() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let limit = Limit::new(1, Duration::from_millis(100));
        let router: Router = Router::new()
            .route(
                "/slow",
                get(move || {
                    let released = released.clone();
                    async move {
                        if let Some(wait) = released.lock().await.take() {
                            let _ = wait.await;
                        }
                        "done"
                    }
                }),
            )
            .layer(axum::middleware::from_fn_with_state(limit, limit_requests));
        let request = || Request::get("/slow").body(Body::empty()).unwrap();

        let first = tokio::spawn(router.clone().oneshot(request()));
        // Let the first request take the only place.
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let started = tokio::time::Instant::now();
        let refused = router.clone().oneshot(request()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!(refused.headers()["retry-after"], "1");
        let body = axum::body::to_bytes(refused.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "busy");

        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        let again = router.oneshot(request()).await.unwrap();
        assert_eq!(again.status(), StatusCode::OK);
    }
}
