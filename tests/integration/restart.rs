//! Restart safety: SIGKILL during concurrent writes loses no acknowledged
//! write, and revisions survive unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::cluster_harness::Cluster;
use crate::common::{machine, ADMIN_PASSWORD};

/// Acknowledged writes to see before the kill.
const WRITES_BEFORE_KILL: usize = 300;
/// Longest to wait for them.
const WRITES_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_loses_no_acknowledged_write() {
    let mut node = Cluster::start(1).await;
    let api = node.client(0);

    // uuid -> revision for every create that got a 2xx.
    let acknowledged: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut writers = Vec::new();
    for worker in 0..8u32 {
        let api = api.clone();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..10_000u32 {
                let body = machine(worker * 100_000 + n);
                let Ok(response) = api
                    .http
                    .post(api.url("/api/v1/machines"))
                    .bearer_auth(api.token.as_deref().unwrap())
                    .json(&body)
                    .send()
                    .await
                else {
                    return; // the server is gone
                };
                if response.status().is_success() {
                    let Ok(object) = response.json::<serde_json::Value>().await else {
                        return;
                    };
                    let uuid = object["uuid"].as_str().unwrap().to_string();
                    let revision = object["revision"].as_u64().unwrap();
                    acknowledged.lock().await.insert(uuid, revision);
                }
            }
        }));
    }
    // Let writes flow, then kill -9 mid-stream.
    let started = std::time::Instant::now();
    while acknowledged.lock().await.len() < WRITES_BEFORE_KILL {
        assert!(
            started.elapsed() < WRITES_LIMIT,
            "fewer than {WRITES_BEFORE_KILL} writes acknowledged within {WRITES_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.kill(0);
    for writer in writers {
        let _ = tokio::time::timeout(Duration::from_secs(40), writer).await;
    }
    let acknowledged = acknowledged.lock().await.clone();
    eprintln!("{} writes acknowledged before SIGKILL", acknowledged.len());
    assert!(
        acknowledged.len() > 100,
        "only {} writes before the kill",
        acknowledged.len()
    );

    node.restart(0).await;
    let api = node.anonymous(0).login("admin", ADMIN_PASSWORD).await;
    let mut missing = 0;
    for (uuid, revision) in &acknowledged {
        let reply = api.get(&format!("/api/v1/machines/{uuid}")).await;
        if reply.status != 200 {
            missing += 1;
            continue;
        }
        assert_eq!(
            reply.body["revision"].as_u64(),
            Some(*revision),
            "revision of {uuid} changed"
        );
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged writes lost",
        acknowledged.len()
    );
}
