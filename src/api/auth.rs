//! Authentication and authorization for the API: Basic credentials exchanged
//! for bearer tokens, and the middleware that checks every other call's
//! token against its signature, expiry, revocation and scope.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, AppState};
use crate::auth::{self, Claims};
use crate::model::{ObjectKind, Scope, ScopeLevel, TokenInfo, User};
use crate::store::Command;

/// Longest lifetime a token may be issued for.
pub const MAX_TOKEN_TTL_SECS: u64 = 366 * 24 * 3600;

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

/// `POST /api/v1/auth/token` with HTTP Basic credentials.
pub async fn issue_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<TokenGrant>> {
    let (name, password) = basic_credentials(&headers)?;
    let request: TokenRequest = if body.is_empty() {
        TokenRequest::default()
    } else {
        super::objects::parse_json(&body)?
    };
    if request.user.is_some() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "`user` is only for POST /tokens; this endpoint issues for the caller",
        )
        .at("user"));
    }
    let user: Option<User> = state.store.get_typed(ObjectKind::Users, &name)?;
    let phc = user.as_ref().map(|u| u.password_hash.clone());
    // Verify even for unknown users so timing does not reveal who exists.
    let verified = tokio::task::spawn_blocking(move || match phc {
        Some(phc) => auth::verify_password(&password, &phc),
        None => {
            let _ = auth::verify_password(&password, dummy_hash());
            false
        }
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let user = match (verified, user) {
        (true, Some(user)) => user,
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
    let ttl = request.ttl_secs.unwrap_or(state.settings.token_ttl_secs);
    if ttl == 0 || ttl > MAX_TOKEN_TTL_SECS {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!("ttl_secs must be between 1 and {MAX_TOKEN_TTL_SECS}"),
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

/// Middleware: a valid, unrevoked bearer token whose scope covers the call.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    match authorize(&state, &request) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

fn authorize(state: &AppState, request: &Request) -> ApiResult<Principal> {
    let token = bearer(request.headers())?;
    let key = state
        .store
        .signing_key()?
        .ok_or_else(|| ApiError::unauthorized("the cluster is not bootstrapped yet"))?;
    let claims = auth::verify(token, &key, state.now()).map_err(|e| match e {
        auth::AuthError::Expired => ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "token_expired",
            "the bearer token has expired; log in again",
        ),
        _ => ApiError::unauthorized("the bearer token is not valid"),
    })?;
    let info: Option<TokenInfo> = state.store.get_typed(ObjectKind::Tokens, &claims.jti)?;
    match info {
        Some(info) if !info.revoked => {}
        _ => {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "token_revoked",
                "the bearer token has been revoked",
            ))
        }
    }
    if state.store.get(ObjectKind::Users, &claims.sub)?.is_none() {
        return Err(ApiError::unauthorized("the token's user no longer exists"));
    }
    let (level, kind, object) = required_scope(request.method(), request.uri().path());
    if !auth::allows(&claims.scope, level, kind, object.as_deref()) {
        return Err(ApiError::forbidden(format!(
            "this token's scope does not allow {} {}",
            request.method(),
            request.uri().path()
        )));
    }
    Ok(Principal { claims })
}

/// What a call needs: reads need `read`; changes need `write`; anything on
/// users or tokens needs `admin`.
fn required_scope(method: &Method, path: &str) -> (ScopeLevel, Option<ObjectKind>, Option<String>) {
    let mut segments = path
        .trim_start_matches("/api/v1/")
        .split('/')
        .filter(|s| !s.is_empty());
    let first = segments.next();
    if first == Some("cluster") {
        return (ScopeLevel::Admin, None, None);
    }
    let kind = first.and_then(|s| s.parse::<ObjectKind>().ok());
    let object = segments.next().map(str::to_string);
    let reading = matches!(*method, Method::GET | Method::HEAD);
    let level = match kind {
        Some(ObjectKind::Users) | Some(ObjectKind::Tokens) => ScopeLevel::Admin,
        _ if reading => ScopeLevel::Read,
        _ => ScopeLevel::Write,
    };
    (level, kind, object)
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
    fn scope_needed_by_route() {
        let check = |m: Method, p: &str| required_scope(&m, p);
        assert_eq!(
            check(Method::GET, "/api/v1/machines"),
            (ScopeLevel::Read, Some(ObjectKind::Machines), None)
        );
        assert_eq!(
            check(Method::PATCH, "/api/v1/machines/abc"),
            (
                ScopeLevel::Write,
                Some(ObjectKind::Machines),
                Some("abc".into())
            )
        );
        assert_eq!(check(Method::GET, "/api/v1/users").0, ScopeLevel::Admin);
        assert_eq!(
            check(Method::GET, "/api/v1/events"),
            (ScopeLevel::Read, None, None)
        );
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
