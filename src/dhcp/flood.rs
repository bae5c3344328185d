//! A cap on how often one client can make this node propose a lease
//! change: every DISCOVER and REQUEST is a log entry, so a client flooding
//! them would otherwise flood the log.
//!
//! Keyed by hardware address (a keyed token bucket, governor's GCRA). A
//! whole boot takes four lease commands (the firmware's DISCOVER and
//! REQUEST, then iPXE's), plus retransmissions, so the burst leaves room
//! for several boots in a row; past it, one a second.

use std::num::NonZeroU32;

use governor::clock::DefaultClock;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// Lease commands a client may cause at once.
pub const BURST: u32 = 16;
/// Then this many a second.
pub const PER_SEC: u32 = 1;
/// Clients tracked before the table is pruned of full buckets.
pub const MAX_CLIENTS: usize = 65_536;

pub struct ClientLimiter {
    limiter: RateLimiter<Vec<u8>, DefaultKeyedStateStore<Vec<u8>>, DefaultClock>,
}

impl Default for ClientLimiter {
    fn default() -> Self {
        Self::new(BURST, PER_SEC)
    }
}

impl ClientLimiter {
    pub fn new(burst: u32, per_sec: u32) -> Self {
        let per_sec = NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        ClientLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
        }
    }

    /// Whether the client `hardware_addr` may cause one more lease command
    /// now. With the table full even after pruning (more than
    /// [`MAX_CLIENTS`] clients busy at once), every client is let through:
    /// a fleet that large is not a flood to refuse.
    pub fn allow(&self, hardware_addr: &[u8]) -> bool {
        if self.limiter.len() >= MAX_CLIENTS {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            if self.limiter.len() >= MAX_CLIENTS {
                return true;
            }
        }
        self.limiter.check_key(&hardware_addr.to_vec()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_client_is_held_back_and_others_are_not() {
        let limiter = ClientLimiter::new(4, 1);
        let flooder = [1u8, 2, 3, 4, 5, 6];
        let allowed = (0..100).filter(|_| limiter.allow(&flooder)).count();
        assert!((4..=5).contains(&allowed), "{allowed}");
        for i in 0..50u8 {
            assert!(limiter.allow(&[9, 9, 9, 9, 9, i]), "client {i}");
        }
    }
}
