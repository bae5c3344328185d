//! Bad input: every case gets a 4xx JSON error with a stable code, and the
//! state is unchanged afterwards.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{machine, InProcess};

/// Every object of every kind the tests touch, to compare before and after.
async fn snapshot(api: &crate::common::Client) -> Value {
    let mut all = serde_json::Map::new();
    for kind in [
        "machines",
        "profiles",
        "params",
        "bootenvs",
        "templates",
        "subnets",
        "reservations",
    ] {
        all.insert(
            kind.into(),
            api.get(&format!("/api/v1/{kind}")).await.expect(200).body,
        );
    }
    Value::Object(all)
}

#[tokio::test]
async fn garbage_is_refused_and_changes_nothing() {
    let node = InProcess::start().await;
    let api = &node.client;
    api.post("/api/v1/subnets", json!({"name": "lan", "cidr": "198.18.0.0/24", "pools": [{"start": "198.18.0.10", "end": "198.18.0.99"}]}))
        .await
        .expect(201);
    api.post(
        "/api/v1/templates",
        json!({"id": "ok", "body": "hello {{ machine.name }}"}),
    )
    .await
    .expect(201);
    let existing = api.post("/api/v1/machines", machine(1)).await.expect(201);
    let uuid = existing.body["uuid"].as_str().unwrap().to_string();
    let before = snapshot(api).await;

    let cases: Vec<(Method, &str, Vec<u8>, u16, &str)> = vec![
        // Malformed JSON.
        (Method::POST, "/api/v1/machines", b"{\"name\": ".to_vec(), 400, "malformed_json"),
        (Method::POST, "/api/v1/machines", b"\xff\xfe".to_vec(), 400, "malformed_json"),
        // Not an object.
        (Method::POST, "/api/v1/machines", b"[1,2]".to_vec(), 400, "invalid_body"),
        // Unknown field.
        (Method::POST, "/api/v1/machines", br#"{"name":"x","hardware_addrs":[],"colour":"red"}"#.to_vec(), 400, "unknown_field"),
        // Wrong type.
        (Method::POST, "/api/v1/machines", br#"{"name": 5}"#.to_vec(), 400, "invalid_type"),
        // Invalid MAC, IP, UUID.
        (Method::POST, "/api/v1/machines", br#"{"name":"x","hardware_addrs":["52:54:zz:00:00:01"]}"#.to_vec(), 400, "invalid_mac"),
        (Method::POST, "/api/v1/machines", br#"{"name":"x","address":"198.18.0.300"}"#.to_vec(), 400, "invalid_value"),
        (Method::POST, "/api/v1/machines", br#"{"name":"x","uuid":"not-a-uuid"}"#.to_vec(), 400, "invalid_value"),
        // Duplicate name and MAC across machines.
        (Method::POST, "/api/v1/machines", br#"{"name":"m1"}"#.to_vec(), 409, "duplicate"),
        (Method::POST, "/api/v1/machines", br#"{"name":"other","hardware_addrs":["52:54:00:00:00:01"]}"#.to_vec(), 409, "duplicate"),
        // References to missing profiles and bootenvs.
        (Method::POST, "/api/v1/machines", br#"{"name":"x","profiles":["nope"]}"#.to_vec(), 409, "missing_reference"),
        (Method::POST, "/api/v1/machines", br#"{"name":"x","bootenv":"nope"}"#.to_vec(), 409, "missing_reference"),
        // Invalid CIDR; pool outside its subnet.
        (Method::POST, "/api/v1/subnets", br#"{"name":"bad","cidr":"198.18.0.0/33"}"#.to_vec(), 400, "invalid_value"),
        (Method::POST, "/api/v1/subnets", br#"{"name":"bad","cidr":"198.18.1.0/24","pools":[{"start":"198.18.2.1","end":"198.18.2.9"}]}"#.to_vec(), 400, "pool_outside_subnet"),
        // A template that does not parse.
        (Method::POST, "/api/v1/templates", b"{\"id\":\"broken\",\"body\":\"line one\\n{{ machine.name \"}".to_vec(), 400, "invalid_template"),
        // Unknown kind.
        (Method::POST, "/api/v1/gizmos", b"{}".to_vec(), 404, "not_found"),
        // Already exists.
        (Method::POST, "/api/v1/templates", br#"{"id":"ok","body":"x"}"#.to_vec(), 409, "already_exists"),
    ];
    for (method, path, body, status, code) in cases {
        let reply = api.raw(method.clone(), path, body.clone()).await;
        assert_eq!(
            (reply.status.as_u16(), reply.code()),
            (status, code),
            "{method} {path} {:?} -> {:?}",
            String::from_utf8_lossy(&body),
            reply.body
        );
        assert!(reply.body["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }

    // The template error names the template, line and column.
    let reply = api
        .raw(
            Method::POST,
            "/api/v1/templates",
            b"{\"id\":\"broken\",\"body\":\"line one\\n{{ machine.name \"}".to_vec(),
        )
        .await;
    let message = reply.body["message"].as_str().unwrap();
    assert!(
        message.contains("broken") && message.contains("line 2"),
        "{message}"
    );

    // A PATCH whose test fails, a stale If-Match, a malformed patch, a patch
    // that would break validation.
    let path = format!("/api/v1/machines/{uuid}");
    api.patch(&path, json!([{"op": "test", "path": "/name", "value": "wrong"}, {"op": "replace", "path": "/name", "value": "renamed"}]))
        .await
        .expect_error(409, "patch_test_failed");
    api.call_with(
        Method::PATCH,
        &path,
        Some(json!([{"op": "replace", "path": "/name", "value": "renamed"}])),
        &[("if-match", "1".into())],
    )
    .await
    .expect_error(412, "precondition_failed");
    api.call_with(
        Method::PATCH,
        &path,
        Some(json!([])),
        &[("if-match", "W/W/\"1\"".into())],
    )
    .await
    .expect_error(400, "invalid_if_match");
    api.patch(&path, json!({"op": "replace"}))
        .await
        .expect_error(400, "invalid_body");
    api.patch(
        &path,
        json!([{"op": "replace", "path": "/hardware_addrs/0", "value": "nonsense"}]),
    )
    .await
    .expect_error(400, "invalid_mac");
    api.patch(&path, json!([{"op": "remove", "path": "/no/such/path"}]))
        .await
        .expect_error(400, "invalid_patch");
    // Changing the key through PUT.
    let mut body = existing.body.clone();
    body["uuid"] = json!("00000000-0000-4000-8000-000000000001");
    api.put(&path, body).await.expect_error(409, "key_mismatch");
    // Bad query parameters.
    api.get("/api/v1/machines?limit=0")
        .await
        .expect_error(400, "invalid_query");
    api.get("/api/v1/machines?limit=abc")
        .await
        .expect_error(400, "invalid_query");
    api.get("/api/v1/machines?cursor=%21%21")
        .await
        .expect_error(400, "invalid_query");
    // A body over the size limit.
    let huge = format!("{{\"id\":\"big\",\"body\":\"{}\"}}", "x".repeat(2 << 20));
    let reply = api
        .raw(Method::POST, "/api/v1/templates", huge.into_bytes())
        .await;
    assert_eq!(reply.status.as_u16(), 413, "{:?}", reply.body);
    assert_eq!(reply.code(), "body_too_large");

    assert_eq!(snapshot(api).await, before, "bad input changed the state");
    node.running.shutdown().await;
}
