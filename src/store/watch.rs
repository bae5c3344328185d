//! The change watch: one resumable stream of committed changes, in commit
//! order, without gaps, shared by the event stream API and the services that
//! keep a cache of the state (DHCP's subnet table, the renderer's cache).
//!
//! A [`Watch`] starts after a revision its owner has seen (a [`View`] it
//! loaded: `Store::watch_after`, or a client's `Last-Event-ID`:
//! `Store::watch`) and yields every later change
//! as [`Change::Event`], each revision exactly one more than the last. When
//! it cannot (the changes it would need are past the event log's retention,
//! or a Raft snapshot replaced the state, event log included) it yields
//! [`Change::Reset`]: reload from a view at that revision, then go on. It
//! never skips silently.
//!
//! Live changes arrive through the in-process broadcast `apply` publishes
//! to; the event log in RocksDB is the source of truth. The watch reads the
//! log whenever the broadcast cannot be trusted to be complete: at start,
//! after a revision gap, after the receiver lagged, after a snapshot
//! install, and when more than [`CATCH_UP_EVENTS`] wait in its receiver (a
//! slow subscriber is served from the log, and reset once the log no longer
//! has what it needs). Per watch, memory is bounded: one chunk of at most
//! [`CATCH_UP_EVENTS`] events or [`CATCH_UP_BYTES`] (plus the broadcast
//! ring, which all subscribers share and which drops what a slow one did
//! not take). Filtering by what a subscriber may see comes after the gap
//! check, in the caller.

use std::collections::VecDeque;

use tokio::sync::broadcast::{self, error::RecvError};

use super::{Event, Store, StoreError, View};

/// Most events read from the event log per catch-up step.
pub const CATCH_UP_EVENTS: usize = 128;
/// Most bytes of events held per catch-up step (at least one event is
/// always read, however large).
pub const CATCH_UP_BYTES: usize = 4 << 20;

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The next committed change: its revision is the previous one's plus one.
    Event(Event),
    /// Changes after the last delivered one cannot be delivered: reload the
    /// state from a view at (or after) `revision`; changes after `revision`
    /// follow.
    Reset { revision: u64, reason: ResetReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The event log no longer holds the next change (the subscriber fell
    /// behind its retention).
    Expired,
    /// A Raft snapshot replaced this replica's state.
    SnapshotInstalled,
}

impl ResetReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            ResetReason::Expired => "expired",
            ResetReason::SnapshotInstalled => "snapshot_installed",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum WatchError {
    /// At start: the changes right after `since` are no longer kept.
    #[error("events before revision {oldest} are no longer kept (the state is at {revision})")]
    Expired { oldest: u64, revision: u64 },
    #[error("the store is shutting down")]
    Closed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a watch stands: what it delivered last, and from which state.
/// The gap and reset rules live here, apart from I/O, so they can be
/// checked on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    /// Revision of the last change delivered (or of the state reloaded).
    last: u64,
    /// Install epoch of the state `last` belongs to.
    epoch: u64,
}

/// What to do with one live event.
#[derive(Debug, PartialEq, Eq)]
enum Live {
    Deliver,
    /// Already delivered (from the event log).
    Skip,
    /// Something is missing before it: read the event log.
    CatchUp,
}

/// What a read of the event log found.
#[derive(Debug, PartialEq)]
enum Step {
    /// Deliver these, in order, then read again.
    Deliver(Vec<Event>),
    /// Nothing after `last`: follow the live feed.
    CaughtUp,
    Reset(Change),
}

impl Cursor {
    fn live(&self, revision: u64) -> Live {
        if revision <= self.last {
            Live::Skip
        } else if Some(revision) == self.last.checked_add(1) {
            Live::Deliver
        } else {
            Live::CatchUp
        }
    }

    /// Judges events read from a view (with its install epoch and
    /// revision) after `last`.
    fn read(&mut self, epoch: u64, revision: u64, events: Vec<Event>) -> Step {
        if epoch != self.epoch {
            return self.reset(epoch, revision, ResetReason::SnapshotInstalled);
        }
        let Some(first) = events.first() else {
            if revision > self.last {
                // Changes exist after `last` but none is in the log.
                return self.reset(epoch, revision, ResetReason::Expired);
            }
            return Step::CaughtUp;
        };
        let consecutive = Some(first.revision) == self.last.checked_add(1)
            && events
                .windows(2)
                .all(|pair| Some(pair[1].revision) == pair[0].revision.checked_add(1));
        if !consecutive {
            return self.reset(epoch, revision, ResetReason::Expired);
        }
        Step::Deliver(events)
    }

    fn reset(&mut self, epoch: u64, revision: u64, reason: ResetReason) -> Step {
        *self = Cursor {
            last: revision,
            epoch,
        };
        Step::Reset(Change::Reset { revision, reason })
    }
}

/// A stream of committed changes; see the module doc. Get one from
/// [`Store::watch`].
pub struct Watch {
    store: Store,
    live: broadcast::Receiver<Event>,
    installs: tokio::sync::watch::Receiver<u64>,
    cursor: Cursor,
    /// Events read from the log, not yet delivered.
    backlog: VecDeque<Event>,
    /// Whether the next changes come from the log rather than the live feed.
    catching_up: bool,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("cursor", &self.cursor)
            .field("backlog", &self.backlog.len())
            .field("catching_up", &self.catching_up)
            .finish_non_exhaustive()
    }
}

impl Watch {
    pub(crate) fn start(store: Store, since: Option<u64>) -> Result<Watch, WatchError> {
        // Subscribed before the view is taken: whatever commits after the
        // view is in the live feed (or the feed says it lagged).
        let live = store.subscribe();
        let installs = store.raft().snapshot_installs();
        let view = store.view()?;
        let revision = view.revision();
        let since = since.unwrap_or(revision);
        if since < revision {
            let oldest = view.oldest_event()?;
            if oldest.is_none_or(|oldest| oldest > since.saturating_add(1)) {
                return Err(WatchError::Expired {
                    oldest: oldest.unwrap_or(revision + 1),
                    revision,
                });
            }
        }
        let cursor = Cursor {
            last: since,
            epoch: view.install_epoch(),
        };
        drop(view);
        Ok(Watch {
            store,
            live,
            installs,
            cursor,
            backlog: VecDeque::new(),
            catching_up: true,
        })
    }

    /// A watch of the changes after `view`, for a cache just loaded from
    /// it: nothing between the load and the watch is missed, and a snapshot
    /// installed since the view was taken gives a reset.
    pub(crate) fn after(store: Store, view: &View<'_>) -> Watch {
        let live = store.subscribe();
        let installs = store.raft().snapshot_installs();
        Watch {
            store,
            live,
            installs,
            cursor: Cursor {
                last: view.revision(),
                epoch: view.install_epoch(),
            },
            backlog: VecDeque::new(),
            // The log has what committed between the view and now.
            catching_up: true,
        }
    }

    /// The revision of the last change delivered (or reset to).
    pub fn last_revision(&self) -> u64 {
        self.cursor.last
    }

    /// The next change. Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Result<Change, WatchError> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                self.cursor.last = event.revision;
                return Ok(Change::Event(event));
            }
            if self.catching_up {
                if let Some(change) = self.catch_up()? {
                    return Ok(change);
                }
                continue;
            }
            if self.live.len() > CATCH_UP_EVENTS {
                // Far behind the live feed: read from the log, in bounded
                // chunks, which is what decides what can still be
                // delivered. The ring only caches the log's tail; a
                // subscriber past the log's retention is reset even if the
                // ring happens to still hold what it needs, so whether it is
                // reset does not depend on the ring's size.
                self.catching_up = true;
                continue;
            }
            tokio::select! {
                biased;
                changed = self.installs.changed() => {
                    if changed.is_err() {
                        return Err(WatchError::Closed);
                    }
                    self.catching_up = true;
                }
                received = self.live.recv() => match received {
                    Ok(event) => match self.cursor.live(event.revision) {
                        Live::Skip => {}
                        Live::Deliver => {
                            self.cursor.last = event.revision;
                            return Ok(Change::Event(event));
                        }
                        Live::CatchUp => self.catching_up = true,
                    },
                    // What the receiver dropped is in the event log, or the
                    // log says it is gone: either way, not a silent skip.
                    Err(RecvError::Lagged(_)) => self.catching_up = true,
                    Err(RecvError::Closed) => return Err(WatchError::Closed),
                },
            }
        }
    }

    /// Reads the next chunk of the event log into the backlog; returns a
    /// reset when the log cannot continue from where the watch stands.
    fn catch_up(&mut self) -> Result<Option<Change>, WatchError> {
        // Whatever install happened so far, this view includes it; whatever
        // commits after it, the fresh receiver gets. What the old receiver
        // held is at or before the view: dropping it loses nothing, and a
        // stale backlog does not count as being behind.
        self.installs.borrow_and_update();
        self.live = self.live.resubscribe();
        let view = self.store.view()?;
        let events = view.events_within(self.cursor.last, CATCH_UP_EVENTS, CATCH_UP_BYTES)?;
        match self
            .cursor
            .read(view.install_epoch(), view.revision(), events)
        {
            Step::Deliver(events) => {
                self.backlog.extend(events);
                Ok(None)
            }
            Step::CaughtUp => {
                self.catching_up = false;
                Ok(None)
            }
            Step::Reset(change) => {
                self.backlog.clear();
                // Everything after the view is in the live feed.
                self.catching_up = false;
                Ok(Some(change))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::ObjectKind;
    use crate::store::{Action, Command};

    fn event(revision: u64) -> Event {
        Event {
            revision,
            kind: ObjectKind::Profiles,
            key: format!("p{revision}"),
            action: Action::Created,
            object: None,
        }
    }

    fn events(revisions: impl IntoIterator<Item = u64>) -> Vec<Event> {
        revisions.into_iter().map(event).collect()
    }

    /// One check of the cursor's rule for a log read: from `(last, epoch)`,
    /// a view at `(epoch, revision)` holding `found` gives `expected`, and
    /// leaves the cursor at `after`.
    fn check_read(
        start: (u64, u64),
        view: (u64, u64),
        found: Vec<Event>,
        expected: Step,
        after: (u64, u64),
    ) {
        let mut cursor = Cursor {
            last: start.0,
            epoch: start.1,
        };
        assert_eq!(cursor.read(view.0, view.1, found), expected);
        assert_eq!((cursor.last, cursor.epoch), after);
    }

    #[test]
    fn live_events_are_delivered_only_in_sequence() {
        let cursor = Cursor { last: 10, epoch: 0 };
        assert_eq!(cursor.live(9), Live::Skip);
        assert_eq!(cursor.live(10), Live::Skip);
        assert_eq!(cursor.live(11), Live::Deliver);
        assert_eq!(cursor.live(12), Live::CatchUp);
    }

    #[test]
    fn log_reads_continue_or_reset_never_skip() {
        let reset = |revision, reason| Step::Reset(Change::Reset { revision, reason });
        // The next events, in order.
        check_read(
            (10, 0),
            (0, 13),
            events(11..=13),
            Step::Deliver(events(11..=13)),
            (10, 0),
        );
        // Nothing more: follow the live feed.
        check_read((13, 0), (0, 13), vec![], Step::CaughtUp, (13, 0));
        // A watch ahead of this replica (resumed from another node) waits.
        check_read((20, 0), (0, 13), vec![], Step::CaughtUp, (20, 0));
        // The next one was dropped by retention.
        check_read(
            (10, 0),
            (0, 30),
            events(15..=30),
            reset(30, ResetReason::Expired),
            (30, 0),
        );
        // Changes exist but the log holds none after `last`.
        check_read(
            (10, 0),
            (0, 30),
            vec![],
            reset(30, ResetReason::Expired),
            (30, 0),
        );
        // A hole inside a chunk is a gap too.
        check_read(
            (10, 0),
            (0, 14),
            events([11, 12, 14]),
            reset(14, ResetReason::Expired),
            (14, 0),
        );
        // A snapshot install replaced the state, even if the log would
        // seem to continue.
        check_read(
            (10, 0),
            (1, 40),
            events(11..=40),
            reset(40, ResetReason::SnapshotInstalled),
            (40, 1),
        );
    }

    async fn store(dir: &std::path::Path, retention: u64, channel: usize) -> Store {
        crate::store::view::tests::test_store(dir, retention, channel).await
    }

    async fn create_profiles(store: &Store, names: std::ops::Range<u64>) -> Vec<u64> {
        let mut revisions = Vec::new();
        for n in names {
            let done = store
                .submit(
                    Command::Create {
                        kind: ObjectKind::Profiles,
                        object: json!({"name": format!("p{n}")}),
                    },
                    store.write_deadline(),
                )
                .await
                .unwrap();
            revisions.push(done.revision);
        }
        revisions
    }

    async fn next(watch: &mut Watch) -> Change {
        tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
            .await
            .expect("a change in time")
            .unwrap()
    }

    fn revision_of(change: &Change) -> u64 {
        match change {
            Change::Event(e) => e.revision,
            Change::Reset { .. } => panic!("unexpected {change:?}"),
        }
    }

    #[tokio::test]
    async fn a_watch_that_lagged_catches_up_from_the_log_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        // A live channel far smaller than what is written while the watch
        // is not read: the receiver lags, the log has everything.
        let store = store(dir.path(), crate::model::DEFAULT_EVENT_RETENTION, 4).await;
        let mut watch = store.watch(None).unwrap();
        let written = create_profiles(&store, 0..40).await;
        let mut seen = Vec::new();
        for _ in 0..40 {
            seen.push(revision_of(&next(&mut watch).await));
        }
        assert_eq!(seen, written);
        // And then live again.
        let more = create_profiles(&store, 40..42).await;
        for revision in more {
            assert_eq!(revision_of(&next(&mut watch).await), revision);
        }
        store.raft().shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_watch_behind_retention_is_reset_and_a_start_behind_it_refused() {
        let dir = tempfile::tempdir().unwrap();
        let retention = crate::model::MIN_EVENT_RETENTION;
        let store = store(dir.path(), retention, 1_024).await;
        let first = create_profiles(&store, 0..2).await;
        let mut watch = store.watch(Some(first[1])).unwrap();
        let written = create_profiles(&store, 2..(retention + 4)).await;
        let last = *written.last().unwrap();
        // The events after where the watch stands were dropped: a reset to
        // the state as it is, not the oldest events that remain.
        assert_eq!(
            next(&mut watch).await,
            Change::Reset {
                revision: last,
                reason: ResetReason::Expired
            }
        );
        let after = create_profiles(&store, 20..21).await;
        assert_eq!(revision_of(&next(&mut watch).await), after[0]);

        // Starting behind retention is refused outright.
        match store.watch(Some(first[0])) {
            Err(WatchError::Expired { oldest, revision }) => {
                assert_eq!(revision, after[0]);
                assert_eq!(oldest, after[0] - (retention - 1));
            }
            other => panic!("{other:?}"),
        }
        // The oldest kept event's predecessor is still a valid start.
        let mut watch = store.watch(Some(after[0] - retention)).unwrap();
        assert_eq!(
            revision_of(&next(&mut watch).await),
            after[0] - (retention - 1)
        );
        store.raft().shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_subscriber_far_behind_the_live_feed_is_judged_by_the_log() {
        let dir = tempfile::tempdir().unwrap();
        // The live channel could hold everything; the log keeps the fewest
        // events the prefs allow.
        let store = store(dir.path(), crate::model::MIN_EVENT_RETENTION, 1_024).await;
        let mut watch = store.watch(None).unwrap();
        let first = create_profiles(&store, 0..1).await;
        assert_eq!(revision_of(&next(&mut watch).await), first[0]);
        let written = create_profiles(&store, 1..(CATCH_UP_EVENTS as u64 + 10)).await;
        assert_eq!(
            next(&mut watch).await,
            Change::Reset {
                revision: *written.last().unwrap(),
                reason: ResetReason::Expired
            }
        );
        // Behind by less than the catch-up step: served from the live feed
        // even past retention, in order.
        let few = create_profiles(&store, 1_000..1_010).await;
        for revision in few {
            assert_eq!(revision_of(&next(&mut watch).await), revision);
        }
        store.raft().shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_cache_loaded_from_a_view_misses_nothing_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), crate::model::DEFAULT_EVENT_RETENTION, 1_024).await;
        create_profiles(&store, 0..3).await;
        let view = store.view().unwrap();
        let loaded = view.revision();
        // Written after the load, before the watch exists.
        let between = create_profiles(&store, 3..6).await;
        let mut watch = store.watch_after(&view);
        drop(view);
        let later = create_profiles(&store, 6..8).await;
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(revision_of(&next(&mut watch).await));
        }
        assert_eq!(between[0], loaded + 1);
        assert_eq!(seen, [between, later].concat());
        store.raft().shutdown().await.unwrap();
    }
}
