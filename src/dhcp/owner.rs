//! Which node answers a client, so that every node can hear every broadcast
//! and still only one answers.
//!
//! Clients are ranked over the DHCP nodes by rendezvous (highest random
//! weight) hashing of their hardware address, in the spirit of RFC 3074's
//! load balancing: every node computes the same ranking from the same
//! inputs, the first node owns the client, and removing a node moves only
//! that node's clients. The node ranked `k` (counting from 0) takes over
//! once the client has been trying for `k × threshold` seconds, so a dead
//! owner costs its clients one retransmission, and two takeovers never
//! answer the same retransmission.
//!
//! "Trying for" is the larger of the client's `secs` field and how long this
//! node has itself seen the same transaction (hardware address and `xid`)
//! retransmitted: many PXE ROMs send `secs = 0` forever.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Transactions remembered at once; the oldest are forgotten first.
pub const MAX_TRACKED_TRANSACTIONS: usize = 65_536;
/// A transaction not seen again for this long is forgotten: clients give up
/// on a transaction (and start a new `xid`) well within it.
pub const TRANSACTION_MEMORY: Duration = Duration::from_secs(120);

/// Whether this node answers as the client's owner or by takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    Takeover,
    /// The client addressed this node itself (its server identifier, or a
    /// unicast renewal): answered whoever owns it.
    Chosen,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Takeover => "takeover",
            Role::Chosen => "chosen",
        }
    }
}

fn weight(hardware_addr: &[u8], node: u64) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(node.to_be_bytes());
    hash.update([hardware_addr.len() as u8]);
    hash.update(hardware_addr);
    hash.finalize().into()
}

/// This node's place (0 = owner) in the client's ranking over `nodes`, or
/// `None` when `me` is not among them.
pub fn rank_of(hardware_addr: &[u8], nodes: &[u64], me: u64) -> Option<usize> {
    if !nodes.contains(&me) {
        return None;
    }
    let mine = weight(hardware_addr, me);
    // Ties (practically impossible with SHA-256) break by node id, so the
    // ranking is total and the same everywhere.
    Some(
        nodes
            .iter()
            .filter(|&&n| n != me)
            .filter(|&&n| {
                let theirs = weight(hardware_addr, n);
                theirs > mine || (theirs == mine && n < me)
            })
            .count(),
    )
}

/// Whether the node ranked `rank` answers a client that has been trying for
/// `elapsed_secs`, and as what.
pub fn decide(rank: usize, elapsed_secs: u64, threshold_secs: u64) -> Option<Role> {
    if rank == 0 {
        return Some(Role::Owner);
    }
    let due = (rank as u64).saturating_mul(threshold_secs.max(1));
    (elapsed_secs >= due).then_some(Role::Takeover)
}

/// When this node first saw each recent transaction, bounded in size and age.
pub struct Transactions {
    inner: Mutex<Seen>,
    capacity: usize,
}

#[derive(Default)]
struct Seen {
    first: HashMap<(Vec<u8>, u32), Instant>,
    order: VecDeque<((Vec<u8>, u32), Instant)>,
}

impl Default for Transactions {
    fn default() -> Self {
        Self::with_capacity(MAX_TRACKED_TRANSACTIONS)
    }
}

impl Transactions {
    pub fn with_capacity(capacity: usize) -> Self {
        Transactions {
            inner: Mutex::new(Seen::default()),
            capacity: capacity.max(1),
        }
    }

    /// Records a sighting of `xid` from `hardware_addr` at `now`; returns
    /// how long ago this node first saw that transaction.
    pub fn seen(&self, hardware_addr: &[u8], xid: u32, now: Instant) -> Duration {
        let Ok(mut seen) = self.inner.lock() else {
            return Duration::ZERO;
        };
        // Forget what is too old or over capacity, oldest first.
        while let Some((key, at)) = seen.order.front().cloned() {
            let stale = now.saturating_duration_since(at) > TRANSACTION_MEMORY;
            if !stale && seen.order.len() < self.capacity {
                break;
            }
            seen.order.pop_front();
            if seen.first.get(&key) == Some(&at) {
                seen.first.remove(&key);
            }
        }
        let key = (hardware_addr.to_vec(), xid);
        match seen.first.get(&key) {
            Some(&first) => now.saturating_duration_since(first),
            None => {
                seen.first.insert(key.clone(), now);
                seen.order.push_back((key, now));
                Duration::ZERO
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|s| s.first.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(i: u32) -> Vec<u8> {
        let b = i.to_be_bytes();
        vec![0x52, 0x54, b[0], b[1], b[2], b[3]]
    }

    #[test]
    fn every_client_has_exactly_one_owner_and_a_total_order() {
        let nodes = [1, 2, 3, 4, 5];
        for i in 0..2_000 {
            let mut ranks: Vec<usize> = nodes
                .iter()
                .map(|&n| rank_of(&mac(i), &nodes, n).unwrap())
                .collect();
            ranks.sort_unstable();
            assert_eq!(ranks, vec![0, 1, 2, 3, 4], "client {i}");
        }
        assert_eq!(rank_of(&mac(1), &nodes, 9), None);
    }

    #[test]
    fn clients_spread_evenly_and_removing_a_node_moves_only_its_own() {
        let nodes = [1, 2, 3];
        let owner = |i: u32, nodes: &[u64]| {
            *nodes
                .iter()
                .find(|&&n| rank_of(&mac(i), nodes, n) == Some(0))
                .unwrap()
        };
        let mut count = [0usize; 4];
        for i in 0..3_000 {
            count[owner(i, &nodes) as usize] += 1;
        }
        for n in 1..=3 {
            assert!((800..1_200).contains(&count[n]), "{count:?}");
        }
        for i in 0..3_000 {
            let before = owner(i, &nodes);
            let after = owner(i, &[1, 3]);
            if before != 2 {
                assert_eq!(before, after, "client {i} moved although its owner stayed");
            }
        }
    }

    #[test]
    fn takeover_waits_its_turn() {
        assert_eq!(decide(0, 0, 3), Some(Role::Owner));
        assert_eq!(decide(1, 2, 3), None);
        assert_eq!(decide(1, 3, 3), Some(Role::Takeover));
        assert_eq!(decide(2, 5, 3), None);
        assert_eq!(decide(2, 6, 3), Some(Role::Takeover));
        // A threshold of 0 is treated as 1: the owner always gets a chance.
        assert_eq!(decide(1, 0, 0), None);
    }

    #[test]
    fn retransmissions_are_timed_from_the_first_sighting() {
        let seen = Transactions::with_capacity(3);
        let t0 = Instant::now();
        assert_eq!(seen.seen(&mac(1), 7, t0), Duration::ZERO);
        assert_eq!(
            seen.seen(&mac(1), 7, t0 + Duration::from_secs(4)),
            Duration::from_secs(4)
        );
        // A new transaction of the same client starts again.
        assert_eq!(
            seen.seen(&mac(1), 8, t0 + Duration::from_secs(5)),
            Duration::ZERO
        );
        // Capacity: the oldest is forgotten.
        seen.seen(&mac(2), 1, t0 + Duration::from_secs(5));
        seen.seen(&mac(3), 1, t0 + Duration::from_secs(5));
        assert!(seen.len() <= 3);
        assert_eq!(
            seen.seen(&mac(1), 7, t0 + Duration::from_secs(6)),
            Duration::ZERO
        );
        // Age: everything older than the memory is forgotten.
        let later = t0 + TRANSACTION_MEMORY + Duration::from_secs(10);
        assert_eq!(seen.seen(&mac(3), 1, later), Duration::ZERO);
    }
}
