//! Params on machines and profiles, one at a time, and a machine's effective
//! params with where each value came from.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use axum::Json;
use serde_json::{json, Map, Value};

use super::auth::Target;
use super::objects::{if_match, maybe_consistent, parse_json, query_pairs};
use super::{ApiError, ApiResult, AppState};
use crate::model::{EffectiveParam, ObjectKind};
use crate::store::{Command, ParamsError};

/// The `{name}` of a param route (the kind and key come as the [`Target`]
/// the guard authorized).
#[derive(serde::Deserialize)]
pub struct ParamName {
    name: String,
}

fn params_kind(target: &Target) -> ApiResult<ObjectKind> {
    match target.kind {
        k @ (ObjectKind::Machines | ObjectKind::Profiles) => Ok(k),
        k => Err(ApiError::not_found(format!(
            "{} have no params",
            k.as_str()
        ))),
    }
}

fn object(state: &AppState, kind: ObjectKind, key: &str) -> ApiResult<Value> {
    state
        .store
        .get(kind, key)?
        .ok_or_else(|| ApiError::not_found(format!("{} {key:?} does not exist", kind.as_str())))
}

/// RFC 6901 escaping of one path segment.
fn pointer_segment(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

pub async fn list(
    State(state): State<AppState>,
    Extension(target): Extension<Target>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let (kind, key) = (params_kind(&target)?, target.key()?);
    maybe_consistent(&state, &query_pairs(raw.as_deref())?).await?;
    let object = object(&state, kind, &key)?;
    Ok(Json(
        object.get("params").cloned().unwrap_or_else(|| json!({})),
    ))
}

pub async fn get_one(
    State(state): State<AppState>,
    Extension(target): Extension<Target>,
    Path(ParamName { name }): Path<ParamName>,
) -> ApiResult<Json<Value>> {
    let (kind, key) = (params_kind(&target)?, target.key()?);
    let object = object(&state, kind, &key)?;
    object
        .get("params")
        .and_then(|p| p.get(&name))
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("param {name:?} is not set on {key:?}")))
}

pub async fn set(
    State(state): State<AppState>,
    Extension(target): Extension<Target>,
    Path(ParamName { name }): Path<ParamName>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let (kind, key) = (params_kind(&target)?, target.key()?);
    let value: Value = parse_json(&body)?;
    let patch = serde_json::from_value(json!([
        {"op": "add", "path": format!("/params/{}", pointer_segment(&name)), "value": value}
    ]))
    .map_err(|e| ApiError::internal(e.to_string()))?;
    submit_patch(&state, kind, key, patch, &headers).await
}

pub async fn remove(
    State(state): State<AppState>,
    Extension(target): Extension<Target>,
    Path(ParamName { name }): Path<ParamName>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (kind, key) = (params_kind(&target)?, target.key()?);
    // Unsetting a param that is not set is the 404 a GET of it gives, not a
    // failed patch.
    let current = object(&state, kind, &key)?;
    if current.get("params").and_then(|p| p.get(&name)).is_none() {
        return Err(ApiError::not_found(format!(
            "param {name:?} is not set on {key:?}"
        )));
    }
    let patch = serde_json::from_value(json!([
        {"op": "remove", "path": format!("/params/{}", pointer_segment(&name))}
    ]))
    .map_err(|e| ApiError::internal(e.to_string()))?;
    submit_patch(&state, kind, key, patch, &headers).await
}

async fn submit_patch(
    state: &AppState,
    kind: ObjectKind,
    key: String,
    patch: json_patch::Patch,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let if_match = if_match(headers)?;
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
    let params = done
        .object
        .as_ref()
        .and_then(|o| o.get("params"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut response = axum::response::IntoResponse::into_response(Json(params));
    if let Ok(etag) = axum::http::HeaderValue::from_str(&format!("\"{}\"", done.revision)) {
        response
            .headers_mut()
            .insert(axum::http::header::ETAG, etag);
    }
    Ok(response)
}

/// `GET /machines/{key}/effective-params`: every param that resolves for the
/// machine, with its value and source (machine, a profile, global, default).
/// Resolution is the store's ([`crate::store::View::effective_params`]), over
/// one consistent view.
pub async fn effective(
    State(state): State<AppState>,
    Extension(target): Extension<Target>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let key = target.key()?;
    maybe_consistent(&state, &query_pairs(raw.as_deref())?).await?;
    let resolved = state
        .store
        .view()?
        .effective_params(&key)
        .map_err(|e| match e {
            ParamsError::NoSuchMachine(key) => {
                ApiError::not_found(format!("machine {key:?} does not exist"))
            }
            ParamsError::Store(e) => e.into(),
            too_many @ ParamsError::TooManyDefinitions(_) => {
                ApiError::internal(too_many.to_string())
            }
        })?;
    if !resolved.missing_profiles.is_empty() {
        tracing::debug!(machine = %key, missing = ?resolved.missing_profiles, "profiles named in the lookup chain do not exist");
    }
    let mut out = Map::new();
    for (name, EffectiveParam { value, source }) in resolved.params {
        out.insert(name, json!({ "value": value, "source": source }));
    }
    Ok(Json(Value::Object(out)))
}
