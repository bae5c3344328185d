//! `GET /api/v1/events`: the change feed as server-sent events, in commit
//! order, resumable from a revision (`?since=N` or `Last-Event-ID`).
//!
//! Built on the store's watch: a resume point past the event log's
//! retention is refused at connect (`410 events_expired`); a client that
//! falls behind it mid-stream, or a snapshot install on this node, gets an
//! `event: reset` carrying the revision to reload at, never a silent skip.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Extension;
use futures::Stream;

use super::auth::{may_read, Principal};
use super::objects::{present, query_pairs};
use super::{ApiError, ApiResult, AppState};
use crate::error_code as code;
use crate::model::ObjectKind;
use crate::store::{Change, Event, ResetReason, StoreError, WatchError};

/// Each event is shown only if the caller's token could GET its object: the
/// same per-kind and per-object rule, so a read token never sees users or
/// tokens here either.
pub async fn stream(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let mut since: Option<u64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let mut kinds: Vec<ObjectKind> = Vec::new();
    for (name, value) in query_pairs(raw.as_deref())? {
        match name.as_str() {
            "since" => {
                since = Some(value.parse().map_err(|_| {
                    ApiError::new(code::INVALID_QUERY, "since must be a revision").at("since")
                })?)
            }
            "kind" => kinds.push(value.parse().map_err(|_| {
                ApiError::new(code::INVALID_QUERY, format!("no object kind {value:?}")).at("kind")
            })?),
            _ => {
                return Err(ApiError::new(
                    code::INVALID_QUERY,
                    format!("unknown parameter {name:?}"),
                )
                .at(name))
            }
        }
    }
    let mut watch = match state.store.watch(since) {
        Ok(watch) => watch,
        Err(WatchError::Expired { oldest, .. }) => {
            return Err(ApiError::new(
                code::EVENTS_EXPIRED,
                format!("events before revision {oldest} are no longer kept; list the objects and resume from their revision"),
            ))
        }
        Err(WatchError::Store(e)) => return Err(e.into()),
        Err(WatchError::Closed) => {
            return Err(StoreError::Unavailable("the store is shutting down".into()).into())
        }
    };
    let scope = principal.claims.scope;
    let wanted = move |event: &Event| {
        (kinds.is_empty() || kinds.contains(&event.kind))
            && may_read(&scope, event.kind, &event.key)
    };
    let events = async_stream::stream! {
        loop {
            match watch.next().await {
                // Gaps are checked by the watch over every event; what this
                // caller may see is filtered after.
                Ok(Change::Event(event)) => {
                    if wanted(&event) {
                        yield Ok(to_sse(event));
                    }
                }
                Ok(Change::Reset { revision, reason }) => yield Ok(reset(revision, reason)),
                Err(WatchError::Closed) => break,
                Err(e) => {
                    yield Ok(SseEvent::default().event("error").data(e.to_string()));
                    break;
                }
            }
        }
    };
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `event: reset`: the changes after the client's last event cannot be
/// sent (past retention, or this node installed a snapshot). The client
/// reloads what it follows (a list is at or after `revision`) and goes on;
/// the id makes a reconnect resume after `revision`.
fn reset(revision: u64, reason: ResetReason) -> SseEvent {
    let data = serde_json::json!({ "revision": revision, "reason": reason.as_str() });
    SseEvent::default()
        .id(revision.to_string())
        .event("reset")
        .data(data.to_string())
}

fn to_sse(mut event: Event) -> SseEvent {
    event.object = event.object.map(|o| present(event.kind, o));
    let action = match event.action {
        crate::store::Action::Created => "created",
        crate::store::Action::Updated => "updated",
        crate::store::Action::Deleted => "deleted",
    };
    let data = serde_json::to_string(&event).unwrap_or_default();
    SseEvent::default()
        .id(event.revision.to_string())
        .event(action)
        .data(data)
}
