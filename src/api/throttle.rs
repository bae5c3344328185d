//! Rate limits on the two calls anyone can make without a token: login
//! (`POST /auth/token`) and join (`POST /cluster/join`).
//!
//! Each limit is a keyed token bucket (governor's GCRA). Keys are source
//! addresses (IPv6 by /64, what one host can easily hold) or, for login
//! failures, names of users that exist, so the number of keys is bounded by
//! the number of sources actually seen recently and the number of users; a
//! table past its size bound is pruned of keys whose bucket is full again,
//! and while it still is past it, unknown keys are refused.
//!
//! A per-user lock is what stops guessing one account's password from many
//! addresses, but it also lets anyone lock that account out. So the lock
//! does not apply to the few addresses the user last logged in from
//! successfully (the idea of OWASP's "device cookies", keyed by address):
//! an attacker elsewhere is slowed, the operator at their usual address is
//! not.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// Keys one table holds before pruning.
const MAX_KEYS: usize = 65_536;
/// Addresses remembered per user as ones it logged in from.
const TRUSTED_SOURCES_PER_USER: usize = 8;

/// Login attempts per source: a burst of 20, then 5 a second.
const LOGIN_PER_SOURCE_BURST: u32 = 20;
const LOGIN_PER_SOURCE_PER_SEC: u32 = 5;
/// Failed logins per existing user: a burst of 10, then one every 6 s.
const LOGIN_FAILURES_PER_USER_BURST: u32 = 10;
const LOGIN_FAILURE_PERIOD_MS: u64 = 6_000;
/// Refused joins per source: a burst of 10, then one every 6 s.
const JOIN_REFUSALS_PER_SOURCE_BURST: u32 = 10;
const JOIN_REFUSAL_PERIOD_MS: u64 = 6_000;

/// Told to wait: how long until a retry can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter {
    pub secs: u64,
}

struct Keyed<K: Hash + Eq + Clone> {
    limiter: RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(quota: Quota) -> Self {
        Keyed {
            limiter: RateLimiter::keyed(quota),
        }
    }

    /// Takes one cell from `key`'s bucket.
    fn take(&self, key: &K) -> Result<(), RetryAfter> {
        if self.limiter.len() >= MAX_KEYS {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            if self.limiter.len() >= MAX_KEYS {
                return Err(RetryAfter { secs: 1 });
            }
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            RetryAfter {
                secs: wait.as_secs().max(1),
            }
        })
    }
}

/// A counted limit (failures, refusals) with a lockout: when a key's bucket
/// runs dry, the key is refused until the bucket would have a cell again,
/// without a check itself costing a cell.
struct Lockout<K: Hash + Eq + Clone> {
    bucket: Keyed<K>,
    locked_until: std::sync::Mutex<std::collections::HashMap<K, std::time::Instant>>,
}

impl<K: Hash + Eq + Clone> Lockout<K> {
    fn new(quota: Quota) -> Self {
        Lockout {
            bucket: Keyed::new(quota),
            locked_until: std::sync::Mutex::default(),
        }
    }

    /// Counts one failure of `key`.
    fn failed(&self, key: &K) {
        if let Err(retry) = self.bucket.take(key) {
            let now = std::time::Instant::now();
            if let Ok(mut locked) = self.locked_until.lock() {
                if locked.len() >= MAX_KEYS {
                    locked.retain(|_, until| *until > now);
                }
                if locked.len() < MAX_KEYS {
                    locked.insert(key.clone(), now + Duration::from_secs(retry.secs));
                }
            }
        }
    }

    /// Whether `key` is locked out now.
    fn check(&self, key: &K) -> Result<(), RetryAfter> {
        let Ok(mut locked) = self.locked_until.lock() else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        match locked.get(key) {
            Some(until) if *until > now => Err(RetryAfter {
                secs: (*until - now).as_secs().max(1),
            }),
            Some(_) => {
                locked.remove(key);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

fn per_period(burst: u32, period_ms: u64) -> Quota {
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(Duration::from_millis(period_ms.max(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

fn per_second(burst: u32, rate: u32) -> Quota {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// The key for a source address: IPv4 as is, IPv6 by its /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
    }
}

/// The API's rate limits, shared by every request of one node.
pub struct Throttle {
    login_per_source: Keyed<IpAddr>,
    login_failures_per_user: Lockout<String>,
    /// Per user, the addresses of its latest successful logins.
    trusted_sources:
        std::sync::Mutex<std::collections::HashMap<String, std::collections::VecDeque<IpAddr>>>,
    join_refusals_per_source: Lockout<IpAddr>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            login_per_source: Keyed::new(per_second(
                LOGIN_PER_SOURCE_BURST,
                LOGIN_PER_SOURCE_PER_SEC,
            )),
            login_failures_per_user: Lockout::new(per_period(
                LOGIN_FAILURES_PER_USER_BURST,
                LOGIN_FAILURE_PERIOD_MS,
            )),
            trusted_sources: std::sync::Mutex::default(),
            join_refusals_per_source: Lockout::new(per_period(
                JOIN_REFUSALS_PER_SOURCE_BURST,
                JOIN_REFUSAL_PERIOD_MS,
            )),
        }
    }
}

impl Throttle {
    /// Every login attempt from `source` takes a cell.
    pub fn login_attempt(&self, source: IpAddr) -> Result<(), RetryAfter> {
        self.login_per_source.take(&source_key(source))
    }

    /// A wrong password for an existing user takes a cell of that user's.
    pub fn login_failed(&self, user: &str) {
        self.login_failures_per_user.failed(&user.to_string());
    }

    /// A successful login: `source` is trusted for `user` from now on.
    pub fn login_succeeded(&self, user: &str, source: IpAddr) {
        let source = source_key(source);
        let Ok(mut trusted) = self.trusted_sources.lock() else {
            return;
        };
        if trusted.len() >= MAX_KEYS && !trusted.contains_key(user) {
            return;
        }
        let sources = trusted.entry(user.to_string()).or_default();
        sources.retain(|s| *s != source);
        sources.push_back(source);
        while sources.len() > TRUSTED_SOURCES_PER_USER {
            sources.pop_front();
        }
    }

    /// Whether `user` may try to log in from `source` now: refused while the
    /// user's failure bucket is empty, unless `source` is one the user
    /// recently logged in from.
    pub fn login_allowed_for(&self, user: &str, source: IpAddr) -> Result<(), RetryAfter> {
        let trusted = self.trusted_sources.lock().is_ok_and(|trusted| {
            trusted
                .get(user)
                .is_some_and(|sources| sources.contains(&source_key(source)))
        });
        if trusted {
            return Ok(());
        }
        self.login_failures_per_user.check(&user.to_string())
    }

    /// A user is gone (or renamed away): forget its trusted addresses.
    pub fn forget_user(&self, user: &str) {
        if let Ok(mut trusted) = self.trusted_sources.lock() {
            trusted.remove(user);
        }
    }

    /// Whether `source` may make a join attempt now.
    pub fn join_allowed(&self, source: IpAddr) -> Result<(), RetryAfter> {
        self.join_refusals_per_source.check(&source_key(source))
    }

    /// A join from `source` was refused: it takes a cell.
    pub fn join_refused(&self, source: IpAddr) {
        self.join_refusals_per_source.failed(&source_key(source));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_limited_and_keyed_by_slash_64() {
        let throttle = Throttle::default();
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        for _ in 0..LOGIN_PER_SOURCE_BURST {
            assert!(throttle.login_attempt(a).is_ok());
        }
        let refused = throttle.login_attempt(a).unwrap_err();
        assert!(refused.secs >= 1);
        assert!(throttle.login_attempt(b).is_ok());
        let one: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        assert_eq!(source_key(one), source_key(same_64));
        assert_ne!(
            source_key(one),
            source_key("2001:db8:0:1::1".parse().unwrap())
        );
    }

    #[test]
    fn failures_lock_a_user_except_from_where_it_logged_in() {
        let throttle = Throttle::default();
        let home: IpAddr = "198.18.0.1".parse().unwrap();
        let attacker: IpAddr = "198.18.0.66".parse().unwrap();
        assert!(throttle.login_allowed_for("alice", attacker).is_ok());
        throttle.login_succeeded("alice", home);
        for _ in 0..LOGIN_FAILURES_PER_USER_BURST + 1 {
            throttle.login_failed("alice");
        }
        assert!(throttle.login_allowed_for("alice", attacker).is_err());
        assert!(throttle.login_allowed_for("alice", home).is_ok());
        assert!(throttle.login_allowed_for("bob", attacker).is_ok());
        throttle.forget_user("alice");
        assert!(throttle.login_allowed_for("alice", home).is_err());
        for n in 0..=TRUSTED_SOURCES_PER_USER {
            throttle.login_succeeded("carol", IpAddr::from([198, 18, 1, n as u8]));
        }
        assert!(throttle
            .login_allowed_for("carol", IpAddr::from([198, 18, 1, 1]))
            .is_ok());
    }

    #[test]
    fn join_refusals_are_limited_per_source() {
        let throttle = Throttle::default();
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        for _ in 0..=JOIN_REFUSALS_PER_SOURCE_BURST {
            assert!(throttle.join_allowed(a).is_ok());
            throttle.join_refused(a);
        }
        assert!(throttle.join_allowed(a).is_err());
        assert!(throttle.join_allowed("198.18.0.2".parse().unwrap()).is_ok());
    }
}
