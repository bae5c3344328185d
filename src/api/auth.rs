//! Authentication and authorization for the API: Basic credentials exchanged
//! for bearer tokens, and the guard that checks every other call's token
//! (signature, expiry, revocation, its user's generation) and scope.
//!
//! Authorization is decided on what the router matched: each route declares
//! the [`Need`] it has next to its path in `api::router`, and the guard judges
//! the scope against the path parameters as the router decoded them (the same
//! values the handler then acts on, handed over as a [`Target`]). Nothing
//! here reads the raw URL, so no spelling of a path (percent-encoding, either
//! hex case, doubled or dotted segments) can reach a handler the scope does
//! not allow.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, RequestExt as _};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::throttle::RetryAfter;
use super::{ApiError, ApiResult, AppState};
use crate::auth::{self, Claims};
use crate::error_code as code;
use crate::model::{ObjectKind, Scope, ScopeLevel, TokenInfo, User};
use crate::store::Command;

/// What a route needs from the caller. Declared once per route, next to it,
/// in `api::router`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any valid token, whatever its scope (`/auth/whoami`).
    AnyToken,
    /// At least this level, with no kind or object limit (`/status`: read;
    /// `/cluster/...`: admin).
    Level(ScopeLevel),
    /// The kind in the route's `{kind}` parameter and the key in `{key}`
    /// when there is one: reads need `read`, changes `write`; anything on
    /// users or tokens needs `admin`.
    RoutedKind,
    /// A kind fixed by the route, the key in `{key}` (e.g.
    /// `/machines/{key}/effective-params`), levels as for `RoutedKind`.
    Kind(ObjectKind),
    /// The event stream: `read`; kind and object limits are applied to each
    /// event as to a GET of its object.
    Events,
}

/// The kind and key a request was routed to and authorized for; handlers
/// act on exactly this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: ObjectKind,
    pub key: Option<String>,
}

impl Target {
    /// The key, for routes that always have one.
    pub fn key(&self) -> ApiResult<String> {
        self.key
            .clone()
            .ok_or_else(|| ApiError::internal("route has no {key} parameter"))
    }
}

/// The kind a route's `{kind}` names; an unknown one is a 404.
fn parse_kind(kind: &str) -> ApiResult<ObjectKind> {
    kind.parse::<ObjectKind>()
        .map_err(|_| ApiError::not_found(format!("no object kind {kind:?}")))
}

/// The level a call on `kind` needs: users and tokens are admin business;
/// prefs may be read with `read` but changed only by an admin (they set the
/// cluster's limits, token lifetimes among them); otherwise reads need
/// `read` and anything else `write`.
pub fn level_for(kind: ObjectKind, method: &Method) -> ScopeLevel {
    let reading = matches!(*method, Method::GET | Method::HEAD);
    match kind {
        ObjectKind::Users | ObjectKind::Tokens => ScopeLevel::Admin,
        _ if reading => ScopeLevel::Read,
        ObjectKind::Prefs => ScopeLevel::Admin,
        _ => ScopeLevel::Write,
    }
}

/// Whether `scope` may see an event about `kind`/`key`: the rule of a GET of
/// that object.
pub fn may_read(scope: &Scope, kind: ObjectKind, key: &str) -> bool {
    auth::allows(scope, level_for(kind, &Method::GET), Some(kind), Some(key))
}

/// The caller, as established by `require_token`.
#[derive(Debug, Clone)]
pub struct Principal {
    pub claims: Claims,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Lifetime in seconds; capped by the server's maximum.
    pub ttl_secs: Option<u64>,
    /// Narrower scope than the user's own; defaults to the user's own.
    pub scope: Option<Scope>,
    #[serde(default)]
    pub description: String,
    /// Only for `POST /tokens`: whose token (admins issue for any user).
    pub user: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenGrant {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    pub info: TokenInfo,
}

/// `GET /api/v1/ca`: the CA certificate clients pin (public, like a TLS
/// handshake would show it anyway).
pub async fn ca(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca_pem.as_str().to_owned(),
    )
        .into_response()
}

/// The caller's address, as the listener recorded it.
pub fn source_ip(connect: Option<&ConnectInfo<SocketAddr>>) -> IpAddr {
    connect.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// `429 too_many_requests` with `Retry-After`.
pub fn too_many(retry: RetryAfter, what: &str) -> ApiError {
    ApiError::new(
        code::TOO_MANY_REQUESTS,
        format!("too many {what}; retry in {} s", retry.secs),
    )
    .retry_after(retry.secs)
}

/// `503 busy` with `Retry-After`: password hashing is at capacity.
pub fn hashing_busy() -> ApiError {
    ApiError::new(code::BUSY, "password checks are at capacity; retry shortly").retry_after(1)
}

/// `POST /api/v1/auth/token` with HTTP Basic credentials.
///
/// Bounded three ways: attempts per source address, failed attempts per
/// existing user (then refused for a while, right password or not), and the
/// password hashing pool (a full queue is `503 busy`, never a wait).
pub async fn issue_token(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<TokenGrant>> {
    let source = source_ip(connect.as_ref().map(|Extension(c)| c));
    state
        .throttle
        .login_attempt(source)
        .map_err(|r| too_many(r, "login attempts from this address"))?;
    let (name, password) = basic_credentials(&headers)?;
    let request: TokenRequest = if body.is_empty() {
        TokenRequest::default()
    } else {
        super::body::parse_json_object(&body)?
    };
    if request.user.is_some() {
        return Err(ApiError::new(
            code::INVALID_BODY,
            "`user` is only for POST /tokens; this endpoint issues for the caller",
        )
        .at("user"));
    }
    let user: Option<User> = state.store.get_typed(ObjectKind::Users, &name)?;
    if user.is_some() {
        state
            .throttle
            .login_allowed_for(&name, source)
            .map_err(|r| too_many(r, "failed logins for this user"))?;
    }
    let phc = user.as_ref().map(|u| u.password_hash.clone());
    // Verify even for unknown users so timing does not reveal who exists.
    let verified = state
        .hash_pool
        .run(move || match phc {
            Some(phc) => auth::verify_password(&password, &phc),
            None => {
                let _ = auth::verify_password(&password, dummy_hash());
                false
            }
        })
        .await
        .map_err(|_| hashing_busy())?;
    let user = match (verified, user) {
        (true, Some(user)) => {
            state.throttle.login_succeeded(&user.name, source);
            user
        }
        (false, Some(_)) => {
            state.throttle.login_failed(&name);
            return Err(ApiError::unauthorized("wrong user name or password"));
        }
        _ => return Err(ApiError::unauthorized("wrong user name or password")),
    };
    grant(&state, &user, request).await.map(Json)
}

/// `POST /api/v1/tokens`: an admin issues a token for any user.
pub async fn create_for_user(
    state: &AppState,
    principal: &Principal,
    request: TokenRequest,
) -> ApiResult<TokenGrant> {
    let name = request
        .user
        .clone()
        .unwrap_or_else(|| principal.claims.sub.clone());
    let user: User = state
        .store
        .get_typed(ObjectKind::Users, &name)?
        .ok_or_else(|| ApiError::not_found(format!("user {name:?} does not exist")).at("user"))?;
    grant(state, &user, request).await
}

async fn grant(state: &AppState, user: &User, request: TokenRequest) -> ApiResult<TokenGrant> {
    let ceiling = if user.admin {
        ScopeLevel::Admin
    } else {
        ScopeLevel::Write
    };
    let scope = request.scope.unwrap_or(Scope {
        level: ceiling,
        kind: None,
        object: None,
    });
    if scope.level > ceiling {
        return Err(ApiError::forbidden(format!(
            "user {:?} may not hold a token above {ceiling:?}",
            user.name
        ))
        .at("scope.level"));
    }
    let max_ttl = state.store.prefs()?.max_api_token_ttl_secs;
    let ttl = request
        .ttl_secs
        .unwrap_or_else(|| state.settings.token_ttl_secs.min(max_ttl));
    if ttl == 0 || ttl > max_ttl {
        return Err(ApiError::new(
            code::INVALID_TTL,
            format!("ttl_secs must be between 1 and {max_ttl} (the max_api_token_ttl_secs pref)"),
        )
        .at("ttl_secs"));
    }
    let key = state
        .store
        .signing_key()?
        .ok_or_else(|| ApiError::internal("the cluster is not bootstrapped yet"))?;
    let now = state.now();
    let info = TokenInfo {
        id: auth::random_secret(12),
        user: user.name.clone(),
        scope: scope.clone(),
        created_at_unix: now,
        expires_at_unix: now + ttl,
        revoked: false,
        description: request.description,
        user_generation: user.generation,
        revision: 0,
    };
    let object = serde_json::to_value(&info).map_err(|e| ApiError::internal(e.to_string()))?;
    let done = state
        .store
        .submit(Command::Create {
            kind: ObjectKind::Tokens,
            object,
        })
        .await?;
    let info: TokenInfo = done
        .object
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| ApiError::internal("token was stored without its record"))?;
    let claims = Claims {
        jti: info.id.clone(),
        sub: info.user.clone(),
        scope,
        iat: now,
        exp: info.expires_at_unix,
    };
    let token = auth::sign(&claims, &key).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(TokenGrant { token, info })
}

/// `GET /api/v1/auth/whoami`: the caller's token claims.
pub async fn whoami(Extension(principal): Extension<Principal>) -> Json<Claims> {
    Json(principal.claims)
}

/// The guard every authenticated route carries, with the route's [`Need`]:
/// a valid token whose scope covers what was routed. Inserts the
/// [`Principal`] and, for object routes, the [`Target`].
pub async fn guard(
    State((state, need)): State<(AppState, Need)>,
    mut request: Request,
    next: Next,
) -> Response {
    let principal = match authenticate(&state, request.headers()) {
        Ok(principal) => principal,
        Err(e) => return e.into_response(),
    };
    let params = match request
        .extract_parts::<Path<HashMap<String, String>>>()
        .await
    {
        Ok(Path(params)) => params,
        Err(axum::extract::rejection::PathRejection::MissingPathParams(_)) => HashMap::new(),
        Err(e) => {
            return ApiError::new(code::INVALID_PATH, format!("path parameters: {e}"))
                .into_response()
        }
    };
    let target = match need {
        Need::RoutedKind => {
            let Some(kind) = params.get("kind") else {
                return ApiError::internal("route has no {kind} parameter").into_response();
            };
            match parse_kind(kind) {
                Ok(kind) => Some(Target {
                    kind,
                    key: params.get("key").cloned(),
                }),
                Err(e) => return e.into_response(),
            }
        }
        Need::Kind(kind) => Some(Target {
            kind,
            key: params.get("key").cloned(),
        }),
        Need::AnyToken | Need::Level(_) | Need::Events => None,
    };
    let scope = &principal.claims.scope;
    let allowed = match (&need, &target) {
        (Need::AnyToken, _) => true,
        (Need::Level(level), _) => auth::allows(scope, *level, None, None),
        (Need::Events, _) => scope.level >= ScopeLevel::Read,
        (_, Some(target)) => auth::allows(
            scope,
            level_for(target.kind, request.method()),
            Some(target.kind),
            target.key.as_deref(),
        ),
        (_, None) => false,
    };
    if !allowed {
        let what = match &target {
            Some(Target {
                kind,
                key: Some(key),
            }) => format!("{} {key:?}", kind.as_str()),
            Some(Target { kind, key: None }) => kind.as_str().to_string(),
            None => "this call".to_string(),
        };
        return ApiError::forbidden(format!(
            "this token's scope does not allow {} on {what}",
            request.method()
        ))
        .into_response();
    }
    if let Some(target) = target {
        request.extensions_mut().insert(target);
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// A valid bearer token: signed by the cluster, unexpired, its record
/// present and unrevoked, and its user still the one it was issued to (same
/// generation, still allowed the token's level).
fn authenticate(state: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    let token = bearer(headers)?;
    let key = state
        .store
        .signing_key()?
        .ok_or_else(|| ApiError::unauthorized("the cluster is not bootstrapped yet"))?;
    let now = state.now();
    let claims = auth::verify(token, &key, now).map_err(|e| match e {
        auth::AuthError::Expired => ApiError::new(
            code::TOKEN_EXPIRED,
            "the bearer token has expired; log in again",
        ),
        _ => ApiError::unauthorized("the bearer token is not valid"),
    })?;
    let revoked = || ApiError::new(code::TOKEN_REVOKED, "the bearer token has been revoked");
    let info: TokenInfo = state
        .store
        .get_typed(ObjectKind::Tokens, &claims.jti)?
        .ok_or_else(revoked)?;
    if info.revoked || info.user != claims.sub || !info.is_active(now) {
        return Err(revoked());
    }
    let user: User = state
        .store
        .get_typed(ObjectKind::Users, &claims.sub)?
        .ok_or_else(|| ApiError::unauthorized("the token's user no longer exists"))?;
    if user.generation != info.user_generation
        || (claims.scope.level == ScopeLevel::Admin && !user.admin)
    {
        return Err(ApiError::new(
            code::TOKEN_SUPERSEDED,
            "the token's user has changed (password, rights, or deleted and re-created) since it was issued; log in again",
        ));
    }
    Ok(Principal { claims })
}

fn bearer(headers: &HeaderMap) -> ApiResult<&str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("expected `Authorization: Bearer <token>`"))
}

fn basic_credentials(headers: &HeaderMap) -> ApiResult<(String, String)> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .ok_or_else(|| ApiError::unauthorized("HTTP Basic credentials are required"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| ApiError::unauthorized("malformed Basic credentials"))?;
    let (name, password) = decoded
        .split_once(':')
        .ok_or_else(|| ApiError::unauthorized("malformed Basic credentials"))?;
    Ok((name.to_string(), password.to_string()))
}

/// A real argon2id hash, verified against for unknown users so that a
/// failed login takes the same time either way.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| auth::hash_password("no such user").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_by_kind_and_method() {
        assert_eq!(
            level_for(ObjectKind::Machines, &Method::GET),
            ScopeLevel::Read
        );
        assert_eq!(
            level_for(ObjectKind::Machines, &Method::HEAD),
            ScopeLevel::Read
        );
        assert_eq!(
            level_for(ObjectKind::Machines, &Method::PATCH),
            ScopeLevel::Write
        );
        assert_eq!(
            level_for(ObjectKind::Users, &Method::GET),
            ScopeLevel::Admin
        );
        assert_eq!(
            level_for(ObjectKind::Tokens, &Method::GET),
            ScopeLevel::Admin
        );
        let read = Scope {
            level: ScopeLevel::Read,
            kind: None,
            object: None,
        };
        assert!(may_read(&read, ObjectKind::Machines, "m1"));
        assert!(!may_read(&read, ObjectKind::Users, "admin"));
        let one = Scope {
            level: ScopeLevel::Write,
            kind: Some(ObjectKind::Machines),
            object: Some("m1".into()),
        };
        assert!(may_read(&one, ObjectKind::Machines, "m1"));
        assert!(!may_read(&one, ObjectKind::Machines, "m2"));
        assert!(!may_read(&one, ObjectKind::Profiles, "m1"));
    }

    #[test]
    fn malformed_authorization_headers() {
        let mut headers = HeaderMap::new();
        assert!(bearer(&headers).is_err());
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert!(bearer(&headers).is_err());
        headers.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(basic_credentials(&headers).is_err());
        headers.insert(header::AUTHORIZATION, "Basic bm9jb2xvbg==".parse().unwrap());
        assert!(basic_credentials(&headers).is_err());
        headers.insert(header::AUTHORIZATION, "Basic YTpiOmM=".parse().unwrap());
        assert_eq!(
            basic_credentials(&headers).unwrap(),
            ("a".into(), "b:c".into())
        );
    }
}
