//! Pre-vote: a voter starts an election only once a majority of voters
//! (itself included) say they have not heard from a leader lately.
//!
//! openraft 0.9 has no pre-vote. Its leader lease makes a follower that
//! heard from the leader within `election_timeout_max` refuse a vote, but a
//! node cut off from the others still raises its term with every election
//! it starts; when the link heals, the leader's next AppendEntries meets
//! that higher term, the leader steps down, and the cluster holds an
//! election it did not need. Here the node keeps openraft's elections
//! switched off (`RuntimeConfig::elect`) unless a pre-vote round just
//! succeeded, so a node that cannot reach a majority never raises its term,
//! and a node that can but whose peers still follow a live leader does not
//! either. The real vote still decides who wins (and checks logs).
//!
//! The round runs in [`crate::node`]; this module holds the messages, the
//! record of when a leader was last heard, and the rule for granting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::{RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::types::{NodeId, NodeInfo};

/// Asks a voter whether it would vote in an election now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreVoteRequest {
    pub(crate) candidate: NodeId,
    /// The candidate's current term, for the receiver's logs.
    pub(crate) term: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreVoteResponse {
    pub(crate) granted: bool,
}

/// When this node last accepted AppendEntries or a snapshot chunk from a
/// leader: milliseconds since `base`, `NEVER` before the first. Lock-free,
/// since every AppendEntries call updates it.
#[derive(Debug)]
pub(crate) struct LeaderContact {
    base: Instant,
    last_ms: AtomicU64,
}

const NEVER: u64 = u64::MAX;

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact {
            base: Instant::now(),
            last_ms: AtomicU64::new(NEVER),
        }
    }
}

impl LeaderContact {
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(NEVER - 1);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn heard_within(&self, window: Duration) -> bool {
        self.heard_within_at(window, Instant::now())
    }

    fn heard_within_at(&self, window: Duration, now: Instant) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last == NEVER {
            return false;
        }
        let at = self.base + Duration::from_millis(last);
        now.saturating_duration_since(at) < window
    }
}

/// Whether this node would grant a pre-vote now: it is not a leader that
/// heard from a quorum within `window`, and not a follower that heard from
/// a leader within it.
pub(crate) fn grant(
    metrics: &RaftMetrics<NodeId, NodeInfo>,
    contact: &LeaderContact,
    window: Duration,
) -> bool {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    match metrics.state {
        ServerState::Leader => metrics
            .millis_since_quorum_ack
            .is_none_or(|ms| ms >= window_ms),
        _ => !contact.heard_within(window),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_ages_out() {
        let contact = LeaderContact::default();
        let window = Duration::from_millis(300);
        assert!(!contact.heard_within(window));
        contact.touch();
        assert!(contact.heard_within(window));
        let at = contact.base + Duration::from_millis(contact.last_ms.load(Ordering::Relaxed));
        assert!(contact.heard_within_at(window, at + Duration::from_millis(299)));
        assert!(!contact.heard_within_at(window, at + Duration::from_millis(300)));
    }
}
