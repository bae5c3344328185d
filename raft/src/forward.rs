//! What a member asks the leader to do, and how the leader does it.
//!
//! The messages of the peer RPC `Forward` call (a write, a read index, a
//! membership change), the failures a forwarded call can end in, and
//! [`LeaderOps`], which carries a request out on the node that believes it
//! is the leader. Both the local path ([`crate::node`]) and the peer RPC
//! service ([`crate::network`]) use it, so neither depends on the other.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{Raft, RaftMetrics};
use serde::{Deserialize, Serialize};

use crate::types::{NodeId, NodeInfo, Payload, Reply, TypeConfig};

/// What travels in a `Forward` call: the request and the wall-clock time
/// after which the leader must not act on it. A request held up in a cut
/// link (TCP retransmits it after the heal) would otherwise be applied long
/// after its client was told it failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ForwardEnvelope {
    pub(crate) deadline_unix_ms: u64,
    pub(crate) request: ForwardRequest,
}

/// Extra room given to a forwarded request's transport bound for clock
/// differences between members (a large skew is warned about when a node
/// joins). A caller's own deadline travels without it.
pub(crate) const FORWARD_CLOCK_MARGIN: Duration = Duration::from_millis(1_000);

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A request a member hands to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ForwardRequest {
    /// Propose an application payload.
    Write(Payload),
    /// Confirm leadership with a quorum and return the index a linearizable
    /// read must wait for.
    ReadIndex,
    /// Add a learner and wait (bounded) for it to catch up.
    AddLearner { id: NodeId, info: NodeInfo },
    /// Make `voters` the voter set; other members become learners.
    ChangeMembership { voters: BTreeSet<NodeId> },
}

/// The leader's answer to a [`ForwardRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ForwardReply {
    Written(Reply),
    ReadIndex(Option<u64>),
    MembershipChanged,
}

/// Why the leader (or the node that thought it was leader) refused.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum ForwardFailure {
    /// Not the leader; nothing was proposed. Carries the leader it knows of.
    #[error("not the leader (leader hint: {leader_id:?})")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader: Option<NodeInfo>,
    },
    /// The leader cannot hear from a quorum; nothing was proposed.
    #[error("leader cannot reach a quorum: {0}")]
    NoQuorum(String),
    /// Proposed, but no outcome within the bound: it may still apply.
    #[error("no outcome in time: {0}")]
    Indeterminate(String),
    /// A bounded wait ran out after the operation itself succeeded.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Refused (membership change in progress, unknown learner, ...).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The leader's Raft has stopped.
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// The request reached the leader after its deadline; nothing was
    /// proposed.
    #[error("arrived after its deadline: {0}")]
    Expired(String),
}

/// Why a forwarded call failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The request certainly did not reach the peer (connect failed).
    NotSent(String),
    /// The request may have reached the peer; its outcome is unknown.
    Lost(String),
    /// The peer answered with a failure.
    Remote(ForwardFailure),
}

fn write_failure(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> ForwardFailure {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ForwardFailure::NotLeader {
            leader_id: f.leader_id,
            leader: f.leader_node,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ForwardFailure::Rejected(e.to_string())
        }
        RaftError::Fatal(f) => ForwardFailure::Fatal(f.to_string()),
    }
}

/// Last index the leader knows replicated to `id`.
pub(crate) fn matched_index(m: &RaftMetrics<NodeId, NodeInfo>, id: NodeId) -> Option<u64> {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&id).copied().flatten())
        .map(|l| l.index)
}

/// Carries out [`ForwardRequest`]s on this node as leader.
pub(crate) struct LeaderOps {
    pub(crate) raft: Raft<TypeConfig>,
    /// Bound on one leader operation.
    pub(crate) timeout: Duration,
    /// Bound on waiting for a new learner to catch up.
    pub(crate) learner_catch_up: Duration,
}

impl LeaderOps {
    /// Runs `req` on this node as leader; refuses with NotLeader when it is
    /// not. Every wait is bounded.
    pub(crate) async fn execute(
        &self,
        req: ForwardRequest,
    ) -> Result<ForwardReply, ForwardFailure> {
        let bound = self.timeout;
        match req {
            ForwardRequest::Write(payload) => {
                match tokio::time::timeout(bound, self.raft.client_write(payload)).await {
                    Err(_) => Err(ForwardFailure::Indeterminate(format!(
                        "not committed within {bound:?}"
                    ))),
                    Ok(Ok(resp)) => Ok(ForwardReply::Written(resp.data)),
                    Ok(Err(e)) => Err(write_failure(e)),
                }
            }
            ForwardRequest::ReadIndex => {
                match tokio::time::timeout(bound, self.raft.get_read_log_id()).await {
                    Err(_) => Err(ForwardFailure::NoQuorum(format!(
                        "leadership not confirmed within {bound:?}"
                    ))),
                    Ok(Ok((read_log_id, _applied))) => {
                        Ok(ForwardReply::ReadIndex(read_log_id.map(|l| l.index)))
                    }
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                        Err(ForwardFailure::NotLeader {
                            leader_id: f.leader_id,
                            leader: f.leader_node,
                        })
                    }
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                        Err(ForwardFailure::NoQuorum(q.to_string()))
                    }
                    Ok(Err(RaftError::Fatal(f))) => Err(ForwardFailure::Fatal(f.to_string())),
                }
            }
            ForwardRequest::AddLearner { id, info } => {
                let added =
                    tokio::time::timeout(bound, self.raft.add_learner(id, info, false)).await;
                let resp = match added {
                    Err(_) => {
                        return Err(ForwardFailure::Indeterminate(format!(
                            "learner not added within {bound:?}"
                        )))
                    }
                    Ok(result) => result.map_err(write_failure)?,
                };
                // Wait for the learner to hold everything up to its own
                // membership entry, so a promotion right after does not
                // leave the cluster waiting on a voter that is far behind.
                let target = resp.log_id.index;
                let mut metrics = self.raft.metrics();
                let caught_up = async move {
                    metrics
                        .wait_for(|m| matched_index(m, id).is_some_and(|i| i >= target))
                        .await
                        .map(|_| ())
                };
                match tokio::time::timeout(self.learner_catch_up, caught_up).await {
                    Ok(Ok(_)) => Ok(ForwardReply::MembershipChanged),
                    Ok(Err(_)) => Err(ForwardFailure::Fatal("raft stopped".into())),
                    Err(_) => Err(ForwardFailure::Timeout(format!(
                        "learner {id} added but not caught up to {target} within {:?}",
                        self.learner_catch_up
                    ))),
                }
            }
            ForwardRequest::ChangeMembership { voters } => {
                match tokio::time::timeout(bound, self.raft.change_membership(voters, false)).await
                {
                    Err(_) => Err(ForwardFailure::Indeterminate(format!(
                        "membership change not committed within {bound:?}"
                    ))),
                    Ok(Ok(_)) => Ok(ForwardReply::MembershipChanged),
                    Ok(Err(e)) => Err(write_failure(e)),
                }
            }
        }
    }
}
