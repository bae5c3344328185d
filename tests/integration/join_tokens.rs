//! Join tokens and the join endpoint refuse everything but a valid, live,
//! unspent token and a parsable CSR, and a refusal changes nothing.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{Client, InProcess};

fn join_body(token: &str, csr: &str) -> Value {
    json!({"token": token, "csr_pem": csr, "rpc_addr": "127.0.0.9:8444", "api_addr": "127.0.0.9:8443"})
}

#[tokio::test]
async fn join_tokens_are_checked_and_refusals_change_nothing() {
    let node = InProcess::start().await;
    let api = &node.client;
    let anonymous = Client::for_node(node.running.api_addr, node.dir.path());
    let (csr, _key) = cradle::tls::new_csr(&["127.0.0.9".into()]).unwrap();

    // Issuing: bad ttl and uses; the printed command pins the CA.
    api.post("/api/v1/cluster/tokens", json!({"ttl_secs": 0}))
        .await
        .expect_error(400, "invalid_ttl");
    api.post("/api/v1/cluster/tokens", json!({"uses": 0}))
        .await
        .expect_error(400, "invalid_uses");
    api.post("/api/v1/cluster/tokens", json!({"colour": 1}))
        .await
        .expect_error(400, "invalid_body");
    let grant = api
        .post(
            "/api/v1/cluster/tokens",
            json!({"ttl_secs": 600, "uses": 1}),
        )
        .await
        .expect(201);
    let token = grant.body["token"].as_str().unwrap().to_string();
    let command = grant.body["join_command"].as_str().unwrap();
    assert!(
        command.starts_with(&format!(
            "cradle join --token {token} --ca-hash {}",
            node.running.ca_fingerprint
        )),
        "{command}"
    );
    // Only a hash is kept: listing never shows the secret, nor its hash.
    let listed = api.get("/api/v1/cluster/tokens").await.expect(200);
    let (_, secret) = token.split_once('.').unwrap();
    assert!(!listed.body.to_string().contains(secret));
    let hash = cradle::cluster::state::hash_secret(secret);
    assert!(!listed.body.to_string().contains(&hash), "{}", listed.body);
    assert!(listed.body[0].get("secret_sha256").is_none());
    assert!(listed.body[0]["uses_left"].is_u64(), "{}", listed.body);
    // Join tokens are for admins only.
    anonymous
        .get("/api/v1/cluster/tokens")
        .await
        .expect_error(401, "unauthorized");

    let node_ids = |nodes: Value| -> Vec<u64> {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_u64().unwrap())
            .collect()
    };
    let nodes_before = node_ids(api.get("/api/v1/cluster/nodes").await.expect(200).body);
    assert_eq!(nodes_before, [1]);
    let (id, _) = token.split_once('.').unwrap();
    let wrong_secret = format!("{id}.{}", "0".repeat(32));
    let unknown_id = format!("{}.{secret}", "0".repeat(12));
    for (bad, code) in [
        ("garbage", "invalid_join_token"),
        ("", "invalid_join_token"),
        (wrong_secret.as_str(), "invalid_join_token"),
        (unknown_id.as_str(), "invalid_join_token"),
    ] {
        anonymous
            .post("/api/v1/cluster/join", join_body(bad, &csr))
            .await
            .expect_error(401, code);
    }
    // A CSR that does not parse, addresses that are not host:port, unknown
    // fields: refused before the token is spent.
    anonymous
        .post("/api/v1/cluster/join", join_body(&token, "not a csr"))
        .await
        .expect_error(400, "invalid_csr");
    let mut body = join_body(&token, &csr);
    body["rpc_addr"] = json!("no port");
    anonymous
        .post("/api/v1/cluster/join", body)
        .await
        .expect_error(400, "invalid_address");
    let mut body = join_body(&token, &csr);
    body["extra"] = json!(1);
    anonymous
        .post("/api/v1/cluster/join", body)
        .await
        .expect_error(400, "invalid_body");
    assert_eq!(
        node_ids(api.get("/api/v1/cluster/nodes").await.expect(200).body),
        nodes_before,
        "a refused join changed the registry"
    );

    // The valid join: a certificate for a new node id, signed by the CA.
    let joined = anonymous
        .post("/api/v1/cluster/join", join_body(&token, &csr))
        .await
        .expect(200);
    assert_eq!(joined.body["node_id"], 2);
    let cert = joined.body["cert_pem"].as_str().unwrap();
    let der = cradle::tls::parse_certs(cert, std::path::Path::new("cert")).unwrap();
    assert_eq!(
        cradle::tls::common_name(&der[0]).as_deref(),
        Some("cradle-node-2")
    );
    // Spent.
    anonymous
        .post("/api/v1/cluster/join", join_body(&token, &csr))
        .await
        .expect_error(401, "join_token_used_up");

    // Revoked, and expired.
    let revoked = api
        .post("/api/v1/cluster/tokens", json!({}))
        .await
        .expect(201);
    let revoked_id = revoked.body["id"].as_str().unwrap();
    api.delete(&format!("/api/v1/cluster/tokens/{revoked_id}"))
        .await
        .expect(200);
    anonymous
        .post(
            "/api/v1/cluster/join",
            join_body(revoked.body["token"].as_str().unwrap(), &csr),
        )
        .await
        .expect_error(401, "join_token_revoked");
    let short = api
        .post("/api/v1/cluster/tokens", json!({"ttl_secs": 1}))
        .await
        .expect(201);
    node.advance_clock(Duration::from_secs(2));
    anonymous
        .post(
            "/api/v1/cluster/join",
            join_body(short.body["token"].as_str().unwrap(), &csr),
        )
        .await
        .expect_error(401, "join_token_expired");

    // Removing the node you talk to (also the last voter) needs force.
    api.delete("/api/v1/cluster/nodes/1")
        .await
        .expect_error(409, "removing_self");
    let nodes = api.get("/api/v1/cluster/nodes").await.expect(200).body;
    assert_eq!(nodes.as_array().unwrap().len(), 2);
    // Node 2 never started: registered, perhaps already a learner, never a voter.
    assert!(
        matches!(nodes[1]["role"].as_str(), Some("pending" | "learner")),
        "{nodes}"
    );
    api.delete("/api/v1/cluster/nodes/2").await.expect(200);

    // From then on node 2's certificate is refused by peer RPC; node 1's
    // and a certificate naming no node are judged as they should be.
    let slot = std::sync::Arc::new(std::sync::OnceLock::new());
    let _ = slot.set(node.running.store.downgrade());
    let admit = cradle::membership::peer_admission(slot);
    let node1_pem = std::fs::read_to_string(node.dir.path().join("server.pem")).unwrap();
    let node1 = cradle::tls::parse_certs(&node1_pem, std::path::Path::new("server.pem")).unwrap();
    assert!((admit.0)(&node1[0]), "a member is refused");
    assert!(!(admit.0)(&der[0]), "a removed node is admitted");
    assert!(!(admit.0)(b"not a certificate"));
    node.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refuses_a_ca_that_does_not_match_the_pin() {
    let node = InProcess::start().await;
    let grant = node
        .client
        .post("/api/v1/cluster/tokens", json!({}))
        .await
        .expect(201);
    let token = grant.body["token"].as_str().unwrap().to_string();
    let joiner = tempfile::tempdir().unwrap();
    let run = |ca_hash: String, token: String| {
        let data = joiner.path().display().to_string();
        let url = format!("https://{}", node.running.api_addr);
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_cradle"))
                .args(["join", "--token", &token, "--ca-hash", &ca_hash, &url])
                .args([
                    "--data-dir",
                    &data,
                    "--api-listen",
                    "127.0.0.1:0",
                    "--rpc-listen",
                    "127.0.0.1:0",
                    "--dhcp-off",
                ])
                .env("CRADLE_LOG", "error")
                .output()
                .await
                .unwrap()
        }
    };
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let output = run(wrong, token.clone()).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing"), "{stderr}");
    assert!(!joiner.path().join("node.json").exists());
    // Malformed token: refused before anything is sent.
    let output = run(node.running.ca_fingerprint.clone(), "nonsense".into()).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("malformed"));
    // Expired (the node's clock moved past its lifetime): refused by the
    // cluster, nothing registered, the joiner keeps no identity.
    let short = node
        .client
        .post("/api/v1/cluster/tokens", json!({"ttl_secs": 60}))
        .await
        .expect(201);
    node.advance_clock(Duration::from_secs(61));
    let output = run(
        node.running.ca_fingerprint.clone(),
        short.body["token"].as_str().unwrap().to_string(),
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("join_token_expired"), "{stderr}");
    assert!(!joiner.path().join("node.json").exists());

    // Nothing was registered and the token is unspent.
    let nodes = node
        .client
        .get("/api/v1/cluster/nodes")
        .await
        .expect(200)
        .body;
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    let tokens = node
        .client
        .get("/api/v1/cluster/tokens")
        .await
        .expect(200)
        .body;
    let first = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == grant.body["id"])
        .expect("the first token is listed");
    assert_eq!(first["uses_left"], 1);
    node.running.shutdown().await;
}
