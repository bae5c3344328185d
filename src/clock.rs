//! The wall clock, read in one place: whole Unix seconds, as the replicated
//! commands carry them (apply never reads a clock; proposers stamp times in).
//!
//! A node reads time through its [`Clock`] (in `ServerSettings::clock`), so a
//! node started in-process by a test can be given an [adjustable](Clock::adjustable)
//! one and moved forward instead of sleeping: token lifetimes and join-token
//! expiry are then tested in no time. A node started from the command line
//! always has the system clock: there is no flag or variable to move it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix seconds now by the system clock (0 if it is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A source of Unix seconds: the system clock, optionally moved forward.
///
/// Clones share their offset: advancing one advances every clone, so the
/// handle a test keeps moves the node's clock.
#[derive(Clone, Default)]
pub struct Clock {
    /// Seconds added to the system clock; `None` for the plain system clock,
    /// which cannot be moved.
    offset_secs: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// The system clock plus an offset that [`Clock::advance`] raises. Time
    /// never goes backwards: only forward moves are offered.
    pub fn adjustable() -> Clock {
        Clock {
            offset_secs: Some(Arc::default()),
        }
    }

    /// Unix seconds now by this clock.
    pub fn unix_now(&self) -> u64 {
        let offset = self
            .offset_secs
            .as_ref()
            .map_or(0, |o| o.load(Ordering::Relaxed));
        unix_now().saturating_add(offset)
    }

    /// Moves an adjustable clock forward by `by` (whole seconds, rounded
    /// up); returns whether the clock can be moved (the system clock cannot).
    pub fn advance(&self, by: Duration) -> bool {
        let Some(offset) = &self.offset_secs else {
            return false;
        };
        let secs = by.as_secs() + u64::from(by.subsec_nanos() > 0);
        offset.fetch_add(secs, Ordering::Relaxed);
        true
    }

    /// Seconds this clock is ahead of the system clock.
    pub fn offset_secs(&self) -> u64 {
        self.offset_secs
            .as_ref()
            .map_or(0, |o| o.load(Ordering::Relaxed))
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.offset_secs {
            None => f.write_str("Clock::system"),
            Some(o) => write!(f, "Clock::adjustable(+{} s)", o.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjustable_clock_moves_forward_and_clones_share_it() {
        let clock = Clock::adjustable();
        let handle = clock.clone();
        let before = clock.unix_now();
        assert!(handle.advance(Duration::from_millis(1_500)));
        assert_eq!(clock.offset_secs(), 2, "rounded up to whole seconds");
        let after = clock.unix_now();
        assert!(
            (before + 2..=before + 3).contains(&after),
            "{before} {after}"
        );
    }

    #[test]
    fn system_clock_cannot_be_moved() {
        let clock = Clock::system();
        assert!(!clock.advance(Duration::from_secs(60)));
        assert_eq!(clock.offset_secs(), 0);
        let (a, b) = (unix_now(), clock.unix_now());
        assert!(b >= a && b - a <= 1);
    }
}
