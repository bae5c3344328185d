//! `GET /api/v1/events`: the change feed as server-sent events, in commit
//! order, resumable from a revision (`?since=N` or `Last-Event-ID`).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Extension;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::auth::{may_read, Principal};
use super::objects::{present, query_pairs};
use super::{ApiError, ApiResult, AppState};
use crate::error_code as code;
use crate::model::ObjectKind;
use crate::store::Event;

/// Events read from the store per backlog step.
const BACKLOG_CHUNK: usize = 1_000;

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
    let store = state.store.clone();
    // Subscribe before reading the backlog so nothing falls in between.
    let mut live = store.subscribe();
    let since = match since {
        Some(since) => since,
        None => store.revision()?,
    };
    if let Some(oldest) = store.oldest_event()? {
        if since.saturating_add(1) < oldest {
            return Err(ApiError::new(
                code::EVENTS_EXPIRED,
                format!("events before revision {oldest} are no longer kept; list the objects and resume from their revision"),
            ));
        }
    }
    let scope = principal.claims.scope;
    let wanted = move |event: &Event| {
        (kinds.is_empty() || kinds.contains(&event.kind))
            && may_read(&scope, event.kind, &event.key)
    };
    let events = async_stream::stream! {
        let mut last = since;
        'outer: loop {
            // Catch up from the stored feed (the first time, and after the
            // live channel lagged or skipped).
            loop {
                let batch = match store.events_after(last, BACKLOG_CHUNK) {
                    Ok(batch) => batch,
                    Err(e) => {
                        yield Ok(SseEvent::default().event("error").data(e.to_string()));
                        break 'outer;
                    }
                };
                if batch.is_empty() {
                    break;
                }
                for event in batch {
                    last = event.revision;
                    if wanted(&event) {
                        yield Ok(to_sse(event));
                    }
                }
            }
            loop {
                match live.recv().await {
                    Ok(event) if event.revision <= last => continue,
                    Ok(event) if event.revision == last + 1 => {
                        last = event.revision;
                        if wanted(&event) {
                            yield Ok(to_sse(event));
                        }
                    }
                    // A gap: something was published before we subscribed
                    // or was dropped; the stored feed has it.
                    Ok(_) | Err(RecvError::Lagged(_)) => continue 'outer,
                    Err(RecvError::Closed) => break 'outer,
                }
            }
        }
    };
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
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
