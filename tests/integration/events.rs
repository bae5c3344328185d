//! The event stream: commit order, resumable from a revision.

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{json, Value};

use crate::common::{machine, Client, InProcess};

/// Opens the stream at `path`. Once its head has arrived the server has
/// subscribed, so every later commit reaches it.
async fn open_events(api: &Client, path: &str) -> reqwest::Response {
    let response = api
        .http
        .get(api.url(path))
        .bearer_auth(api.token.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
}

/// Reads `count` events from the stream at `path`.
async fn read_events(api: &Client, path: &str, count: usize) -> Vec<Value> {
    read_from(open_events(api, path).await, count).await
}

/// Reads `count` events from an open stream.
async fn read_from(response: reqwest::Response, count: usize) -> Vec<Value> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while events.len() < count {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("events arrive in time")
            .expect("stream open")
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                events.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    events
}

#[tokio::test]
async fn events_stream_in_commit_order_and_resume() {
    let node = InProcess::start().await;
    let api = node.client.clone();
    let start = api.get("/api/v1/status").await.expect(200).body["revision"]
        .as_u64()
        .unwrap();

    let live = tokio::spawn(read_from(open_events(&api, "/api/v1/events").await, 6));
    let mut revisions = Vec::new();
    for n in 0..3 {
        let created = api.post("/api/v1/machines", machine(n)).await.expect(201);
        revisions.push(created.etag().unwrap());
        let uuid = created.body["uuid"].as_str().unwrap().to_string();
        let patched = api
            .patch(
                &format!("/api/v1/machines/{uuid}"),
                json!([{"op": "add", "path": "/description", "value": "x"}]),
            )
            .await
            .expect(200);
        revisions.push(patched.etag().unwrap());
    }
    let seen = live.await.unwrap();
    let seen_revisions: Vec<u64> = seen
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(seen_revisions, revisions, "live events in commit order");
    assert_eq!(seen[0]["action"], "created");
    assert_eq!(seen[1]["action"], "updated");
    assert_eq!(seen[0]["kind"], "machines");

    // Resume from a revision: everything after it, then live.
    let resumed = read_events(&api, &format!("/api/v1/events?since={}", revisions[2]), 3).await;
    let resumed_revisions: Vec<u64> = resumed
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(resumed_revisions, revisions[3..].to_vec());
    // From before everything, filtered to one kind.
    let all = read_events(
        &api,
        &format!("/api/v1/events?since={start}&kind=machines"),
        6,
    )
    .await;
    assert_eq!(all.len(), 6);
    // Bad resume points.
    api.get("/api/v1/events?since=abc")
        .await
        .expect_error(400, "invalid_query");
    node.running.shutdown().await;
}
