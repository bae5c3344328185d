//! The event stream: commit order, resumable from a revision, no gaps; a
//! client that falls behind the event log's retention is told to reload.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::StreamExt as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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

/// A node in this process keeping only `retention` events (the
/// cluster-wide `event_retention` pref).
async fn node_with_retention(retention: u64) -> InProcess {
    let node = InProcess::start().await;
    node.client
        .patch(
            "/api/v1/prefs/prefs",
            json!([{"op": "replace", "path": "/event_retention", "value": retention}]),
        )
        .await
        .expect(200);
    node
}

/// Creates `count` profiles named `{prefix}{n}`, `concurrency` at a time,
/// each carrying `pad_bytes` of params; returns their revisions.
async fn create_profiles(
    api: &Client,
    prefix: &str,
    count: usize,
    concurrency: usize,
    pad_bytes: usize,
) -> Vec<u64> {
    let pad = "x".repeat(pad_bytes);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers = (0..concurrency).map(|_| {
        let (api, next, pad, prefix) = (api.clone(), next.clone(), pad.clone(), prefix.to_string());
        async move {
            let mut revisions = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= count {
                    return revisions;
                }
                let body = json!({"name": format!("{prefix}{n}"), "params": {"pad": pad}});
                let created = api.post("/api/v1/profiles", body).await.expect(201);
                revisions.push(created.etag().unwrap());
            }
        }
    });
    let mut all: Vec<u64> = join_all(writers).await.into_iter().flatten().collect();
    all.sort_unstable();
    all
}

#[tokio::test]
async fn a_stream_has_no_gaps_under_concurrent_writes() {
    const WRITES: usize = 300;
    let node = InProcess::start().await;
    let api = node.client.clone();
    let live = {
        let api = api.clone();
        tokio::spawn(async move { read_events(&api, "/api/v1/events", WRITES).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = create_profiles(&api, "p", WRITES, 16, 0).await;
    let seen: Vec<u64> = live
        .await
        .unwrap()
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    // The admin token sees every kind, so every revision must be there,
    // each one more than the last.
    for pair in seen.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap in {seen:?}");
    }
    for revision in &written {
        assert!(seen.contains(revision), "revision {revision} not streamed");
    }
    node.running.shutdown().await;
}

/// An HTTP/1.1 event stream over a socket with a small receive buffer, so
/// the server stops sending as soon as the client stops reading.
struct SlowStream {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    raw: Vec<u8>,
    body: String,
    head_done: bool,
}

impl SlowStream {
    async fn open(node: &InProcess, path: &str) -> SlowStream {
        let addr = node.running.api_addr;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        let ca_pem = std::fs::read_to_string(node.dir.path().join("ca.pem")).unwrap();
        let mut config = cradle::tls::client_config_for_ca(&ca_pem).unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::from(addr.ip());
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let token = node.client.token.as_deref().unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        SlowStream {
            tls,
            raw: Vec::new(),
            body: String::new(),
            head_done: false,
        }
    }

    /// The next frame that carries data, as (event name, data).
    async fn next_frame(&mut self, limit: Duration) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.decode();
            while let Some(end) = self.body.find("\n\n") {
                let frame: String = self.body.drain(..end + 2).collect();
                let name = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap_or("message")
                    .to_string();
                if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return (name, serde_json::from_str(data).unwrap());
                }
            }
            let mut buf = vec![0u8; 64 << 10];
            let n = tokio::time::timeout_at(deadline, self.tls.read(&mut buf))
                .await
                .expect("a frame arrives in time")
                .unwrap();
            assert!(n > 0, "stream closed");
            self.raw.extend_from_slice(&buf[..n]);
        }
    }

    /// Moves complete chunks of the chunked body from `raw` to `body`.
    fn decode(&mut self) {
        if !self.head_done {
            let Some(end) = find(&self.raw, b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).to_string();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            self.raw.drain(..end + 4);
            self.head_done = true;
        }
        while let Some(line_end) = find(&self.raw, b"\r\n") {
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.trim(), 16).unwrap();
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            let data = &self.raw[line_end + 2..line_end + 2 + size];
            self.body.push_str(&String::from_utf8_lossy(data));
            self.raw.drain(..line_end + 2 + size + 2);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_retention_is_reset_not_skipped() {
    let node = node_with_retention(20).await;
    let api = node.client.clone();
    let mut stream = SlowStream::open(&node, "/api/v1/events").await;
    let first = create_profiles(&api, "a", 1, 1, 0).await;
    let (_, seen) = stream.next_frame(Duration::from_secs(20)).await;
    assert_eq!(seen["revision"].as_u64(), Some(first[0]));

    // The client stops reading while far more than the retention is
    // written, in events large enough to fill every buffer on the way.
    let written = create_profiles(&api, "b", 250, 8, 32 << 10).await;
    let last = *written.last().unwrap();

    // What it then reads: events in sequence, then a reset to reload at the
    // current revision, then the changes after it.
    let mut events = vec![first[0]];
    let reset = loop {
        let (name, data) = stream.next_frame(Duration::from_secs(30)).await;
        let revision = data["revision"].as_u64().unwrap();
        if name == "reset" {
            break (revision, data["reason"].clone());
        }
        assert_eq!(
            revision,
            events.last().unwrap() + 1,
            "a gap before the reset"
        );
        events.push(revision);
        assert!(
            revision < last,
            "every change was streamed: no reset was needed"
        );
    };
    assert_eq!(reset, (last, json!("expired")));
    let after = create_profiles(&api, "c", 1, 1, 0).await;
    let (name, data) = stream.next_frame(Duration::from_secs(20)).await;
    assert_eq!(name, "created");
    assert_eq!(data["revision"].as_u64(), Some(after[0]));
    assert_eq!(after[0], last + 1);

    // Resuming from before the retention is refused at connect, as before.
    api.get(&format!("/api/v1/events?since={}", first[0]))
        .await
        .expect_error(410, "events_expired");
    node.running.shutdown().await;
}
