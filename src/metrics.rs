//! A node's Prometheus metrics: the counters services keep as they work
//! (DHCP today; TFTP and boot HTTP join them), and the Raft figures read at
//! scrape time. Served as Prometheus text by `GET /metrics` on the API
//! listener (see `api::metrics`).
//!
//! Label values are `&'static str` from fixed sets (message types, drop
//! reasons), never anything a client sent, so no label can grow without
//! bound.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabel {
    pub message: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FollowerLabel {
    pub follower: String,
}

/// What the DHCP service counts.
#[derive(Clone)]
pub struct DhcpMetrics {
    /// Requests received, by DHCP message type.
    pub received: Family<MessageLabel, Counter>,
    /// Replies sent, by DHCP message type.
    pub sent: Family<MessageLabel, Counter>,
    /// Requests not answered, by reason (also logged at debug level).
    pub dropped: Family<ReasonLabel, Counter>,
    /// Requests answered as the client's owner or by takeover.
    pub answered: Family<RoleLabel, Counter>,
    /// From submitting a lease command to its commit, seconds.
    pub commit_seconds: Histogram,
}

impl DhcpMetrics {
    pub fn drop(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// Raft figures, set from the node's status at each scrape.
#[derive(Clone, Default)]
struct RaftGauges {
    term: Gauge,
    is_leader: Gauge,
    leader_id: Gauge,
    last_log_index: Gauge,
    committed_index: Gauge,
    applied_index: Gauge,
    follower_lag: Family<FollowerLabel, Gauge>,
}

/// Every metric of one node. Cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub dhcp: DhcpMetrics,
    raft: RaftGauges,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cradle");
        let dhcp = DhcpMetrics {
            received: Family::default(),
            sent: Family::default(),
            dropped: Family::default(),
            answered: Family::default(),
            // 0.5 ms to about 16 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        };
        registry.register(
            "dhcp_received",
            "DHCP requests received, by message type",
            dhcp.received.clone(),
        );
        registry.register(
            "dhcp_sent",
            "DHCP replies sent, by message type",
            dhcp.sent.clone(),
        );
        registry.register(
            "dhcp_dropped",
            "DHCP requests not answered, by reason",
            dhcp.dropped.clone(),
        );
        registry.register(
            "dhcp_answered",
            "DHCP requests answered as the client's owner or by takeover",
            dhcp.answered.clone(),
        );
        registry.register(
            "dhcp_commit_seconds",
            "Time from proposing a lease change to its commit",
            dhcp.commit_seconds.clone(),
        );
        let raft = RaftGauges::default();
        registry.register("raft_term", "Current Raft term", raft.term.clone());
        registry.register(
            "raft_is_leader",
            "1 on the leader, 0 elsewhere",
            raft.is_leader.clone(),
        );
        registry.register(
            "raft_leader_id",
            "The leader this node follows (0: none known)",
            raft.leader_id.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Last index in this node's log",
            raft.last_log_index.clone(),
        );
        registry.register(
            "raft_committed_index",
            "Last index this node knows committed",
            raft.committed_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Last index applied to this node's state",
            raft.applied_index.clone(),
        );
        registry.register(
            "raft_follower_lag_entries",
            "On the leader: entries each member is behind the leader's log",
            raft.follower_lag.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            dhcp,
            raft,
        }
    }

    /// The Prometheus text exposition of every metric, with the Raft gauges
    /// taken from `status` now.
    pub fn render(&self, status: &cradle_raft::RaftStatus) -> String {
        let gauge = |v: Option<u64>| i64::try_from(v.unwrap_or(0)).unwrap_or(i64::MAX);
        self.raft.term.set(gauge(Some(status.term)));
        let leading = status.current_leader == Some(status.node_id);
        self.raft.is_leader.set(i64::from(leading));
        self.raft.leader_id.set(gauge(status.current_leader));
        self.raft.last_log_index.set(gauge(status.last_log_index));
        self.raft.committed_index.set(gauge(status.committed));
        self.raft.applied_index.set(gauge(status.applied));
        self.raft.follower_lag.clear();
        if leading {
            let last = status.last_log_index.unwrap_or(0);
            for member in status.members.iter().filter(|m| m.id != status.node_id) {
                let behind = last.saturating_sub(member.matched_index.unwrap_or(0));
                self.raft
                    .follower_lag
                    .get_or_create(&FollowerLabel {
                        follower: member.id.to_string(),
                    })
                    .set(gauge(Some(behind)));
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_exposition() {
        let metrics = Metrics::new();
        metrics
            .dhcp
            .received
            .get_or_create(&MessageLabel {
                message: "discover",
            })
            .inc();
        metrics.dhcp.drop("truncated");
        metrics.dhcp.commit_seconds.observe(0.003);
        let status = cradle_raft::RaftStatus {
            node_id: 1,
            state: cradle_raft::RaftRole::Leader,
            current_leader: Some(1),
            term: 7,
            last_log_index: Some(40),
            committed: Some(40),
            applied: Some(40),
            snapshot: None,
            purged: None,
            quorum_ack_age_ms: Some(1),
            members: Vec::new(),
            stopped: None,
            membership_joint: false,
        };
        let text = metrics.render(&status);
        for line in [
            "cradle_dhcp_received_total{message=\"discover\"} 1",
            "cradle_dhcp_dropped_total{reason=\"truncated\"} 1",
            "cradle_dhcp_commit_seconds_count 1",
            "cradle_raft_term 7",
            "cradle_raft_is_leader 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
