//! `GET /api/v1/status`: this node's view of the cluster, and a digest of
//! its replicated state to compare with the other nodes'.

use axum::extract::State;
use axum::Json;
use cradle_raft::RaftRole;
use serde_json::{json, Value};

use super::{ApiResult, AppState};

pub async fn status(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let raft = state.store.raft().status();
    let role = match raft.state {
        RaftRole::Leader => "leader",
        RaftRole::Follower => "follower",
        RaftRole::Candidate => "candidate",
        RaftRole::Learner => "learner",
        RaftRole::Shutdown => "shutdown",
    };
    let members: Vec<Value> = raft
        .members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "api_addr": m.info.api_addr,
                "rpc_addr": m.info.rpc_addr,
                "voter": m.voter,
                "matched_index": m.matched_index,
                "lag": match (raft.last_log_index, m.matched_index) {
                    (Some(last), Some(matched)) => Some(last.saturating_sub(matched)),
                    _ => None,
                },
            })
        })
        .collect();
    // Healthy: a leader is known and, on the leader, a quorum answered
    // recently (a cut-off leader sees this age grow).
    let stale_after_ms = 2 * state.settings.election_max_ms;
    let health = match (raft.current_leader, raft.state) {
        // Raft stopped on an error (apply halted at an entry it cannot
        // apply): whatever leader it last saw is no longer its business.
        _ if raft.stopped.is_some() => "stopped",
        (None, _) => "no_leader",
        (Some(_), RaftRole::Leader)
            if raft
                .quorum_ack_age_ms
                .is_none_or(|age| age > stale_after_ms) =>
        {
            "no_quorum"
        }
        _ => "ok",
    };
    // Kept by apply: one read, never a scan of the state.
    let digest = state.store.state_digest()?;
    Ok(Json(json!({
        "node_id": raft.node_id,
        "health": health,
        "time_unix": state.now(),
        "role": role,
        "leader": raft.current_leader,
        "term": raft.term,
        "last_log_index": raft.last_log_index,
        "commit_index": raft.committed,
        "applied_index": raft.applied,
        "snapshot_index": raft.snapshot,
        "quorum_ack_age_ms": raft.quorum_ack_age_ms,
        "stopped": raft.stopped,
        "revision": state.store.revision()?,
        // Equal on two nodes at the same index exactly when their replicated
        // state is; entries after the index changed no state.
        "state_digest": digest.map(|d| d.digest.to_hex()),
        "state_digest_index": digest.map(|d| d.log_index),
        "log_format": crate::store::frames::NEWEST_FORMAT,
        "members": members,
        "membership_joint": raft.membership_joint,
        "version": env!("CARGO_PKG_VERSION"),
    })))
}
