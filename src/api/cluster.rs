//! Cluster endpoints: join tokens, the join itself, and the node registry.

use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::{source_ip, too_many};
use super::objects::{flag, parse_json, parse_json_object, query_pairs};
use super::{ApiError, ApiResult, AppState};
use crate::auth::random_secret;
use crate::cluster::join::{JoinRequest, JoinResponse};
use crate::cluster::state::{
    check_join_token, hash_secret, node_common_name, parse_join_token, JoinRefusal, JoinToken,
    TOKEN_ID_HEX, TOKEN_SECRET_HEX,
};
use crate::error_code as code;
use crate::store::{Command, Rejection};

/// Longest a join token may live: joining is an operator's action, now.
pub const MAX_JOIN_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;
pub const MAX_JOIN_TOKEN_USES: u32 = 1_000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    #[serde(default = "default_uses")]
    pub uses: u32,
    #[serde(default)]
    pub description: String,
}

fn default_ttl() -> u64 {
    3600
}

fn default_uses() -> u32 {
    1
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JoinTokenGrant {
    pub id: String,
    /// `<id>.<secret>`: shown once, stored only as a hash.
    pub token: String,
    pub expires_at_unix: u64,
    pub uses: u32,
    /// The complete command to run on the joining node.
    pub join_command: String,
}

fn advertised_api(state: &AppState) -> String {
    format!(
        "https://{}:{}",
        state.settings.advertised_host(),
        state.settings.api_listen.port()
    )
}

/// `POST /api/v1/cluster/tokens` (admin).
pub async fn create_token(State(state): State<AppState>, body: Bytes) -> ApiResult<Response> {
    let request: JoinTokenRequest = if body.is_empty() {
        parse_json(b"{}")?
    } else {
        parse_json_object(&body)?
    };
    if request.ttl_secs == 0 || request.ttl_secs > MAX_JOIN_TOKEN_TTL_SECS {
        return Err(ApiError::new(
            code::INVALID_TTL,
            format!("ttl_secs must be between 1 and {MAX_JOIN_TOKEN_TTL_SECS}"),
        )
        .at("ttl_secs"));
    }
    if request.uses == 0 || request.uses > MAX_JOIN_TOKEN_USES {
        return Err(ApiError::new(
            code::INVALID_USES,
            format!("uses must be between 1 and {MAX_JOIN_TOKEN_USES}"),
        )
        .at("uses"));
    }
    let id = random_secret(TOKEN_ID_HEX / 2);
    let secret = random_secret(TOKEN_SECRET_HEX / 2);
    let now = state.now();
    let token = JoinToken {
        id: id.clone(),
        secret_sha256: hash_secret(&secret),
        created_at_unix: now,
        expires_at_unix: now + request.ttl_secs,
        uses_left: request.uses,
        revoked: false,
        description: request.description,
    };
    state
        .store
        .submit(Command::CreateJoinToken {
            token: token.clone(),
        })
        .await?;
    let full = format!("{id}.{secret}");
    let fingerprint = crate::tls::fingerprint_pem(&state.ca_pem)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let grant = JoinTokenGrant {
        id,
        join_command: format!(
            "cradle join --token {full} --ca-hash {fingerprint} {}",
            advertised_api(&state)
        ),
        token: full,
        expires_at_unix: token.expires_at_unix,
        uses: token.uses_left,
    };
    Ok((StatusCode::CREATED, Json(grant)).into_response())
}

/// `GET /api/v1/cluster/tokens` (admin): never the secrets.
pub async fn list_tokens(State(state): State<AppState>) -> ApiResult<Json<Vec<JoinToken>>> {
    let tokens = state
        .store
        .join_tokens()?
        .into_iter()
        .map(|mut t| {
            t.secret_sha256.clear();
            t
        })
        .collect();
    Ok(Json(tokens))
}

/// `DELETE /api/v1/cluster/tokens/{id}` (admin): revoke.
pub async fn revoke_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let done = state.store.submit(Command::RevokeJoinToken { id }).await?;
    Ok(Json(json!({ "revision": done.revision, "revoked": true })))
}

/// `POST /api/v1/cluster/join`: authenticated by the join token in the body,
/// not by a bearer token (the joining node has none yet).
///
/// Anyone can call this, so nothing is proposed until this node has checked
/// the token against its own replica (hash, revocation, expiry, uses left);
/// the log's `Join` command then checks again against committed state.
/// Refused attempts are rate-limited per source address.
pub async fn join(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Bytes,
) -> ApiResult<Json<JoinResponse>> {
    let source = source_ip(connect.as_ref().map(|Extension(c)| c));
    state
        .throttle
        .join_allowed(source)
        .map_err(|r| too_many(r, "refused join attempts from this address"))?;
    match join_checked(&state, body).await {
        Ok(response) => Ok(response),
        Err(e) => {
            if e.status().is_client_error() {
                state.throttle.join_refused(source);
            }
            Err(e)
        }
    }
}

async fn join_checked(state: &AppState, body: Bytes) -> ApiResult<Json<JoinResponse>> {
    let request: JoinRequest = parse_json_object(&body)?;
    let (token_id, secret) = parse_join_token(&request.token).ok_or_else(|| {
        ApiError::new(
            code::INVALID_JOIN_TOKEN,
            "the join token is malformed (expected <id>.<secret>)",
        )
        .at("token")
    })?;
    let secret_sha256 = hash_secret(secret);
    check_join_token(
        state.store.join_token(token_id)?.as_ref(),
        &secret_sha256,
        state.now(),
    )
    .map_err(|refusal| {
        let e = Rejection::new(refusal.code(), refusal.to_string());
        if refusal == JoinRefusal::Invalid {
            e.at("token")
        } else {
            e
        }
    })?;
    for (field, addr) in [
        ("rpc_addr", &request.rpc_addr),
        ("api_addr", &request.api_addr),
    ] {
        if addr.is_empty()
            || addr.len() > 255
            || !addr.contains(':')
            || addr.contains(char::is_whitespace)
        {
            return Err(
                ApiError::new(code::INVALID_ADDRESS, format!("{field} must be host:port"))
                    .at(field),
            );
        }
    }
    // Check the CSR parses before spending a token use on it.
    let (ca_pem, ca_key) = state
        .store
        .cluster_ca()?
        .ok_or_else(|| ApiError::internal("this node has no cluster CA in its state yet"))?;
    rcgen::CertificateSigningRequestParams::from_pem(&request.csr_pem).map_err(|e| {
        ApiError::new(code::INVALID_CSR, format!("the CSR does not parse: {e}")).at("csr_pem")
    })?;
    let done = state
        .store
        .submit(Command::Join {
            token_id: token_id.to_string(),
            secret_sha256,
            now_unix: state.now(),
            rpc_addr: request.rpc_addr.clone(),
            api_addr: request.api_addr.clone(),
        })
        .await?;
    let node_id = done
        .object
        .as_ref()
        .and_then(|o| o.get("id"))
        .and_then(Value::as_u64)
        .ok_or_else(|| ApiError::internal("join was applied without a node id"))?;
    let cert_pem = crate::tls::sign_csr(
        &ca_pem,
        &ca_key,
        &request.csr_pem,
        &node_common_name(node_id),
    )
    .map_err(|e| ApiError::new(code::INVALID_CSR, e.to_string()).at("csr_pem"))?;
    tracing::info!(node_id, rpc = %request.rpc_addr, "node joined");
    Ok(Json(JoinResponse {
        node_id,
        cert_pem,
        ca_pem,
        server_time_unix: state.now(),
    }))
}

/// `GET /api/v1/cluster/nodes`: the registry joined with Raft's view.
pub async fn list_nodes(State(state): State<AppState>) -> ApiResult<Json<Vec<Value>>> {
    let status = state.store.raft().status();
    let last = status.last_log_index;
    let nodes = state
        .store
        .cluster_nodes()?
        .into_iter()
        .map(|node| {
            let member = status.members.iter().find(|m| m.id == node.id);
            let role = match member {
                _ if node.removed => "removed",
                None => "pending",
                Some(_) if status.current_leader == Some(node.id) => "leader",
                Some(m) if m.voter => "voter",
                Some(_) => "learner",
            };
            json!({
                "id": node.id,
                "api_addr": node.api_addr,
                "rpc_addr": node.rpc_addr,
                "joined_at_unix": node.joined_at_unix,
                "removed": node.removed,
                "role": role,
                "matched_index": member.and_then(|m| m.matched_index),
                "lag": match (last, member.and_then(|m| m.matched_index)) {
                    (Some(l), Some(m)) => Some(l.saturating_sub(m)),
                    _ => None,
                },
            })
        })
        .collect();
    Ok(Json(nodes))
}

/// `DELETE /api/v1/cluster/nodes/{id}[?force=true]`.
pub async fn remove_node(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let mut force = false;
    for (name, value) in query_pairs(raw.as_deref())? {
        if name == "force" {
            force = flag(&value, "force")?;
        }
    }
    let status = state.store.raft().status();
    let voters: Vec<u64> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    if !force {
        if id == status.node_id {
            return Err(ApiError::new(
                code::REMOVING_SELF,
                "this is the node you are talking to; ask another member, or pass force=true",
            ));
        }
        if voters == [id] {
            return Err(ApiError::new(
                code::LAST_VOTER,
                "this is the last voter: removing it would end the cluster; pass force=true",
            ));
        }
    }
    let done = state.store.submit(Command::RemoveNode { id }).await?;
    Ok(Json(json!({ "revision": done.revision, "removed": id })))
}
