//! Leases in a live node: committed by the DHCP lease commands (submitted
//! here as the DHCP server submits them), read and force-released with the
//! `cradle` CLI, and allocatable again afterwards.

use cradle::store::{Command, LeaseRequest};
use serde_json::{json, Value};

use crate::cli::cradle;
use crate::common::InProcess;

fn request(node: &InProcess, client_id: &str, mac: &str, requested: &str) -> LeaseRequest {
    LeaseRequest {
        subnet: "lab".into(),
        client_id: client_id.into(),
        hardware_addr: mac.into(),
        requested: Some(requested.parse().unwrap()),
        now_unix: node.clock.unix_now(),
        node: 1,
        via: None,
        hostname: Some("node7".into()),
        offer_secs: 30,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lists_shows_and_force_releases_leases() {
    let node = InProcess::start().await;
    let store = &node.running.store;
    let config = tempfile::tempdir().unwrap();
    let dir = config.path();
    let endpoint = format!("https://{}", node.running.api_addr);
    let fingerprint = node.running.ca_fingerprint.clone();
    let login = [
        "login",
        &endpoint,
        "--user",
        "admin",
        "--ca-hash",
        &fingerprint,
    ];
    let run = cradle(dir, &login, None).await;
    assert!(run.ok, "{}", run.stderr);

    let subnet = "name: lab\ncidr: 10.0.0.0/24\npools:\n  - start: 10.0.0.10\n    end: 10.0.0.12\n";
    let run = cradle(dir, &["subnets", "create", "-f", "-"], Some(subnet)).await;
    assert!(run.ok, "{}", run.stderr);
    let reservation = "address: 10.0.0.11\nhardware_addr: 52:54:00:00:00:11\nsubnet: lab\n";
    let run = cradle(
        dir,
        &["reservations", "create", "-f", "-"],
        Some(reservation),
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    let run = cradle(dir, &["subnets", "list"], None).await;
    assert!(
        run.ok && run.stdout.contains("10.0.0.0/24"),
        "{}",
        run.stdout
    );
    let run = cradle(
        dir,
        &["reservations", "show", "10.0.0.11", "-o", "json"],
        None,
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    let shown: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(shown["hardware_addr"], "52:54:00:00:00:11");

    // What the DHCP server does for a REQUEST: a bind through the log.
    let done = store
        .submit(
            Command::DhcpBind {
                request: request(
                    &node,
                    "01:52:54:00:00:00:07",
                    "52:54:00:00:00:07",
                    "10.0.0.10",
                ),
            },
            store.write_deadline(),
        )
        .await
        .unwrap();
    let lease = done.object.unwrap();
    assert_eq!(
        (lease["address"].as_str(), lease["state"].as_str()),
        (Some("10.0.0.10"), Some("bound"))
    );

    let run = cradle(dir, &["leases", "list", "-o", "json"], None).await;
    assert!(run.ok, "{}", run.stderr);
    let listed: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["client_id"], "01525400000007");
    assert_eq!(listed[0]["subnet"], "lab");
    let run = cradle(dir, &["leases", "list"], None).await;
    assert!(run.ok && run.stdout.contains("node7"), "{}", run.stdout);
    // Found by address, MAC or client id.
    for key in ["10.0.0.10", "52:54:00:00:00:07", "01-52-54-00-00-00-07"] {
        let run = cradle(dir, &["leases", "show", key, "-o", "json"], None).await;
        assert!(run.ok, "{key}: {}", run.stderr);
        let shown: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(shown["address"], "10.0.0.10", "{key}");
    }
    let run = cradle(dir, &["leases", "show", "52:54:00:00:00:99"], None).await;
    assert!(
        !run.ok && run.stderr.contains("not_found"),
        "{}",
        run.stderr
    );

    // The pool's last free address goes to another client; the pool is
    // then exhausted (10.0.0.11 is reserved).
    let other = store
        .submit(
            Command::DhcpOffer {
                request: request(&node, "02", "", "10.0.0.10"),
            },
            store.write_deadline(),
        )
        .await
        .unwrap();
    assert_eq!(other.object.unwrap()["address"], "10.0.0.12");
    let full = store
        .submit(
            Command::DhcpOffer {
                request: request(&node, "03", "", "10.0.0.10"),
            },
            store.write_deadline(),
        )
        .await
        .unwrap_err();
    assert!(full.to_string().contains("dhcp_pool_exhausted"), "{full}");

    // Leases are not written through the API; DELETE is a forced release.
    node.client
        .post(
            "/api/v1/leases",
            json!({"address": "10.0.0.12", "client_id": "ff", "expires_at_unix": 1}),
        )
        .await
        .expect_error(405, "method_not_allowed");
    let run = cradle(dir, &["leases", "delete", "52:54:00:00:00:07"], None).await;
    assert!(run.ok, "{}", run.stderr);
    let run = cradle(dir, &["leases", "list", "-o", "json"], None).await;
    let listed: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["address"], "10.0.0.12");

    // The released address is allocatable again.
    let again = store
        .submit(
            Command::DhcpOffer {
                request: request(&node, "03", "", "10.0.0.12"),
            },
            store.write_deadline(),
        )
        .await
        .unwrap();
    assert_eq!(again.object.unwrap()["address"], "10.0.0.10");
}
