//! Create, read, update, patch, delete and list for every object kind.
//!
//! Objects travel as the model's JSON. Every response carries the object's
//! revision as its ETag; PUT, PATCH and DELETE honour `If-Match`.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{create_for_user, hashing_busy, Principal, Target, TokenRequest};
use super::body::if_none_match_holds;
use super::{ApiError, ApiResult, AppState};
use crate::error_code as code;
use crate::model::{ObjectKind, User};
use crate::store::{Command, Done, ListQuery};

pub use super::body::{parse_json, parse_json_object};

pub use super::body::if_match_revision as if_match;

/// The conditions of a write: `If-Match` goes to the store, which checks it
/// atomically; `If-None-Match` is judged here against this replica (`*`
/// never holds on these routes, which change an existing object).
fn write_preconditions(
    state: &AppState,
    kind: ObjectKind,
    key: &str,
    headers: &HeaderMap,
) -> ApiResult<Option<u64>> {
    let expected = if_match(headers)?;
    if headers.contains_key(header::IF_NONE_MATCH) {
        let current = state
            .store
            .get(kind, key)?
            .map(|o| o.get("revision").and_then(Value::as_u64).unwrap_or(0));
        if current.is_some() && !if_none_match_holds(headers, current)? {
            return Err(ApiError::new(
                code::PRECONDITION_FAILED,
                "If-None-Match matches the object's current revision",
            ));
        }
    }
    Ok(expected)
}

/// `?name=value&...` pairs in order.
pub fn query_pairs(raw: Option<&str>) -> ApiResult<Vec<(String, String)>> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or(""))
        .map_err(|e| ApiError::new(code::INVALID_QUERY, format!("query string: {e}")))
}

pub fn flag(value: &str, name: &str) -> ApiResult<bool> {
    match value {
        "" | "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(
            ApiError::new(code::INVALID_QUERY, format!("{name} must be true or false")).at(name),
        ),
    }
}

fn number(value: &str, name: &str) -> ApiResult<usize> {
    value.parse().map_err(|_| {
        ApiError::new(code::INVALID_QUERY, format!("{name} must be a number")).at(name)
    })
}

/// Waits for a linearizable view when the query asks `consistent=true`.
pub async fn maybe_consistent(state: &AppState, pairs: &[(String, String)]) -> ApiResult<()> {
    for (name, value) in pairs {
        if name == "consistent" && flag(value, "consistent")? {
            state.store.read_barrier().await?;
        }
    }
    Ok(())
}

/// The object as the API shows it: users as [`crate::model::UserView`] (no password
/// hash).
pub fn present(kind: ObjectKind, mut object: Value) -> Value {
    if kind == ObjectKind::Users {
        match serde_json::from_value::<User>(object.clone()) {
            Ok(user) => return serde_json::to_value(user.redacted()).unwrap_or(object),
            Err(_) => {
                if let Some(map) = object.as_object_mut() {
                    map.remove("password_hash");
                }
            }
        }
    }
    object
}

fn with_etag(status: StatusCode, kind: ObjectKind, done: Done) -> Response {
    let body = match done.object {
        Some(object) => present(kind, object),
        None => json!({ "revision": done.revision }),
    };
    let mut response = (status, Json(body)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", done.revision)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

pub async fn list(
    State(state): State<AppState>,
    Extension(target): Extension<Target>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let kind = target.kind;
    let pairs = query_pairs(raw.as_deref())?;
    let mut query = ListQuery::default();
    for (name, value) in &pairs {
        match name.as_str() {
            "limit" => query.limit = Some(number(value, "limit")?),
            "offset" => query.offset = number(value, "offset")?,
            "cursor" => query.cursor = Some(value.clone()),
            "sort" => query.sort = Some(value.clone()),
            "desc" => query.descending = flag(value, "desc")?,
            "consistent" => {}
            _ => query.filters.push((name.clone(), value.clone())),
        }
    }
    maybe_consistent(&state, &pairs).await?;
    // A list reads up to the store's scan cap and encodes up to a page of
    // 10,000 objects: on a blocking thread, a bounded number at once, so
    // the async workers stay free for everything else.
    let slot = state
        .lists
        .acquire()
        .await
        .map_err(|busy| super::busy_error(&busy, "lists"))?;
    let store = state.store.clone();
    let (body, next_cursor) = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let page = store.list(kind, &query)?;
        let items: Vec<Value> = page.items.into_iter().map(|o| present(kind, o)).collect();
        let body = serde_json::to_vec(&items).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok::<_, ApiError>((body, page.next_cursor))
    })
    .await
    .map_err(|e| ApiError::internal(format!("list task: {e}")))??;
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if let Some(cursor) = next_cursor {
        if let Ok(value) = HeaderValue::from_str(&cursor) {
            response.headers_mut().insert("x-next-cursor", value);
        }
    }
    Ok(response)
}

pub async fn show(
    State(state): State<AppState>,
    Extension(target): Extension<Target>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let (kind, key) = (target.kind, target.key()?);
    maybe_consistent(&state, &query_pairs(raw.as_deref())?).await?;
    let object = state
        .store
        .get(kind, &key)?
        .ok_or_else(|| ApiError::not_found(format!("{} {key:?} does not exist", kind.as_str())))?;
    let revision = object.get("revision").and_then(Value::as_u64).unwrap_or(0);
    if !if_none_match_holds(&headers, Some(revision))? {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{revision}\"")) {
            response.headers_mut().insert(header::ETAG, etag);
        }
        return Ok(response);
    }
    Ok(with_etag(
        StatusCode::OK,
        kind,
        Done {
            revision,
            object: Some(object),
        },
    ))
}

/// The body for creating or replacing a user: a password, not its hash.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserInput {
    pub name: String,
    /// Required on create; on replace, absent keeps the current password.
    pub password: Option<String>,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub revision: u64,
}

async fn user_object(state: &AppState, body: &[u8], existing: Option<User>) -> ApiResult<Value> {
    let input: UserInput = parse_json_object(body)?;
    let password_hash = match (input.password, existing) {
        (Some(password), _) => {
            if password.chars().count() < 8 {
                return Err(ApiError::new(
                    code::WEAK_PASSWORD,
                    "passwords have at least 8 characters",
                )
                .at("password"));
            }
            state
                .hash_pool
                .run(move || crate::auth::hash_password(&password))
                .await
                .map_err(|_| hashing_busy())?
                .map_err(|e| ApiError::internal(e.to_string()))?
        }
        (None, Some(existing)) => existing.password_hash,
        (None, None) => {
            return Err(
                ApiError::new(code::INVALID_BODY, "a new user needs a password").at("password"),
            )
        }
    };
    let user = User {
        name: input.name,
        description: input.description,
        password_hash,
        admin: input.admin,
        generation: 0,
        revision: 0,
    };
    serde_json::to_value(user).map_err(|e| ApiError::internal(e.to_string()))
}

pub async fn create(
    State(state): State<AppState>,
    Extension(target): Extension<Target>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> ApiResult<Response> {
    let kind = target.kind;
    let object = match kind {
        ObjectKind::Tokens => {
            let request: TokenRequest = if body.is_empty() {
                TokenRequest::default()
            } else {
                parse_json_object(&body)?
            };
            let grant = create_for_user(&state, &principal, request).await?;
            return Ok((StatusCode::CREATED, Json(grant)).into_response());
        }
        ObjectKind::Users => user_object(&state, &body, None).await?,
        ObjectKind::Leases => return Err(lease_read_only()),
        ObjectKind::Prefs => {
            return Err(ApiError::new(
                code::ALREADY_EXISTS,
                "prefs always exist; use PUT or PATCH /api/v1/prefs/prefs",
            ))
        }
        _ => {
            let mut object: Value = parse_json(&body)?;
            if !object.is_object() {
                return Err(ApiError::new(code::INVALID_BODY, "expected a JSON object"));
            }
            if kind == ObjectKind::Machines && object.get("uuid").is_none() {
                if let Some(map) = object.as_object_mut() {
                    map.insert("uuid".into(), json!(uuid::Uuid::new_v4()));
                }
            }
            object
        }
    };
    let done = state
        .store
        .submit(
            Command::Create { kind, object },
            state.store.write_deadline(),
        )
        .await?;
    Ok(with_etag(StatusCode::CREATED, kind, done))
}

pub async fn replace(
    State(state): State<AppState>,
    Extension(target): Extension<Target>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let (kind, key) = (target.kind, target.key()?);
    let if_match = write_preconditions(&state, kind, &key, &headers)?;
    let object = match kind {
        ObjectKind::Tokens => return Err(read_only(kind)),
        ObjectKind::Leases => return Err(lease_read_only()),
        ObjectKind::Users => {
            let existing: User = state.store.get_typed(kind, &key)?.ok_or_else(|| {
                ApiError::not_found(format!("{} {key:?} does not exist", kind.as_str()))
            })?;
            user_object(&state, &body, Some(existing)).await?
        }
        _ => parse_json_object(&body)?,
    };
    let done = state
        .store
        .submit(
            Command::Replace {
                kind,
                key,
                object,
                if_match,
            },
            state.store.write_deadline(),
        )
        .await?;
    Ok(with_etag(StatusCode::OK, kind, done))
}

pub async fn patch(
    State(state): State<AppState>,
    Extension(target): Extension<Target>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let (kind, key) = (target.kind, target.key()?);
    if kind == ObjectKind::Tokens {
        return Err(read_only(kind));
    }
    if kind == ObjectKind::Leases {
        return Err(lease_read_only());
    }
    let if_match = write_preconditions(&state, kind, &key, &headers)?;
    let patch: json_patch::Patch = parse_json(&body)?;
    if kind == ObjectKind::Users && patch.0.iter().any(|op| touches(op, "/password_hash")) {
        return Err(ApiError::new(
            code::INVALID_PATCH,
            "passwords change with PUT and a `password` field",
        )
        .at("/password_hash"));
    }
    let done = state
        .store
        .submit(
            Command::Patch {
                kind,
                key,
                patch,
                if_match,
            },
            state.store.write_deadline(),
        )
        .await?;
    Ok(with_etag(StatusCode::OK, kind, done))
}

fn touches(op: &json_patch::PatchOperation, path: &str) -> bool {
    use json_patch::PatchOperation as Op;
    let (target, from) = match op {
        Op::Add(o) => (o.path.to_string(), None),
        Op::Remove(o) => (o.path.to_string(), None),
        Op::Replace(o) => (o.path.to_string(), None),
        Op::Move(o) => (o.path.to_string(), Some(o.from.to_string())),
        Op::Copy(o) => (o.path.to_string(), Some(o.from.to_string())),
        Op::Test(o) => (o.path.to_string(), None),
    };
    target.starts_with(path) || from.is_some_and(|f| f.starts_with(path)) || target.is_empty()
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(target): Extension<Target>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (kind, key) = (target.kind, target.key()?);
    let if_match = write_preconditions(&state, kind, &key, &headers)?;
    let command = match kind {
        ObjectKind::Prefs => {
            return Err(ApiError::new(code::READ_ONLY, "prefs cannot be deleted"));
        }
        // A revoked token stays listed until it expires, so operators see it.
        ObjectKind::Tokens => Command::Patch {
            kind,
            key,
            patch: serde_json::from_value(
                json!([{"op": "replace", "path": "/revoked", "value": true}]),
            )
            .map_err(|e| ApiError::internal(e.to_string()))?,
            if_match,
        },
        _ => Command::Delete {
            kind,
            key,
            if_match,
        },
    };
    let done = state
        .store
        .submit(command, state.store.write_deadline())
        .await?;
    if let (ObjectKind::Users, Some(name)) = (kind, &target.key) {
        state.throttle.forget_user(name);
    }
    Ok(with_etag(StatusCode::OK, kind, done))
}

/// Leases change only through DHCP (apply refuses the rest too); DELETE is
/// a forced release.
fn lease_read_only() -> ApiError {
    ApiError::new(
        code::READ_ONLY,
        "leases change only through DHCP; DELETE releases one",
    )
}

fn read_only(kind: ObjectKind) -> ApiError {
    ApiError::new(
        code::READ_ONLY,
        format!(
            "{} cannot be changed; create a new one or revoke it",
            kind.as_str()
        ),
    )
}
