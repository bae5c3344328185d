//! The API's happy paths: auth, CRUD, ETags, patches, params, lists.

use reqwest::Method;
use serde_json::json;

use crate::common::{machine, Client, InProcess, ADMIN_PASSWORD};

#[tokio::test]
async fn tokens_are_required_and_scoped() {
    let node = InProcess::start().await;
    let anonymous = Client::for_node(node.running.api_addr, node.dir.path());
    anonymous
        .get("/api/v1/machines")
        .await
        .expect_error(401, "unauthorized");
    // Public endpoints.
    anonymous.get("/api/v1/ca").await.expect(200);
    let doc = anonymous.get("/api/v1/openapi.json").await.expect(200);
    assert_eq!(doc.body["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    assert!(doc.body["paths"]["/api/v1/machines/{key}"]["patch"].is_object());
    assert!(doc.body["components"]["schemas"]["Machine"].is_object());
    assert!(doc.body["paths"]["/api/v1/cluster/join"]["post"].is_object());
    assert!(doc.body["components"]["schemas"]["JoinRequest"].is_object());

    // Wrong password.
    let reply = anonymous
        .http
        .post(anonymous.url("/api/v1/auth/token"))
        .basic_auth("admin", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 401);

    // A read-only token can list but not write: 403.
    let admin = &node.client;
    let grant = admin
        .post(
            "/api/v1/tokens",
            json!({"user": "admin", "ttl_secs": 60, "scope": {"level": "read"}}),
        )
        .await
        .expect(201);
    let mut reader = anonymous.clone();
    reader.token = Some(grant.body["token"].as_str().unwrap().to_string());
    reader.get("/api/v1/machines").await.expect(200);
    reader
        .post("/api/v1/machines", machine(1))
        .await
        .expect_error(403, "forbidden");
    reader
        .get("/api/v1/users")
        .await
        .expect_error(403, "forbidden");

    // Revoked: 401 from then on.
    let id = grant.body["info"]["id"].as_str().unwrap();
    admin
        .delete(&format!("/api/v1/tokens/{id}"))
        .await
        .expect(200);
    reader
        .get("/api/v1/machines")
        .await
        .expect_error(401, "token_revoked");

    // A token limited to one kind.
    let grant = admin
        .post(
            "/api/v1/tokens",
            json!({"scope": {"level": "write", "kind": "profiles"}}),
        )
        .await
        .expect(201);
    let mut profiles_only = anonymous.clone();
    profiles_only.token = Some(grant.body["token"].as_str().unwrap().to_string());
    profiles_only
        .post("/api/v1/profiles", json!({"name": "p1"}))
        .await
        .expect(201);
    profiles_only
        .get("/api/v1/machines")
        .await
        .expect_error(403, "forbidden");

    // Users never show their password hash.
    let users = admin.get("/api/v1/users").await.expect(200);
    assert_eq!(users.body[0]["name"], "admin");
    assert!(users.body[0].get("password_hash").is_none());

    // A new user can log in with its password.
    admin
        .post(
            "/api/v1/users",
            json!({"name": "ops", "password": "ops-password-1"}),
        )
        .await
        .expect(201);
    let ops = Client::for_node(node.running.api_addr, node.dir.path())
        .login("ops", "ops-password-1")
        .await;
    ops.post("/api/v1/machines", machine(2)).await.expect(201);
    ops.get("/api/v1/users")
        .await
        .expect_error(403, "forbidden");
    let _ = ADMIN_PASSWORD;
    node.running.shutdown().await;
}

#[tokio::test]
async fn crud_etags_and_patches() {
    let node = InProcess::start().await;
    let api = &node.client;
    api.post("/api/v1/bootenvs", json!({"name": "discovery"}))
        .await
        .expect(201);
    api.post(
        "/api/v1/profiles",
        json!({"name": "rack1", "params": {"rack": "r1"}}),
    )
    .await
    .expect(201);
    let created = api
        .post(
            "/api/v1/machines",
            json!({"name": "web1", "hardware_addrs": ["52:54:00:AA:BB:01"], "bootenv": "discovery", "profiles": ["rack1"]}),
        )
        .await
        .expect(201);
    let uuid = created.body["uuid"].as_str().unwrap().to_string();
    let revision = created.etag().unwrap();
    assert_eq!(created.body["revision"].as_u64(), Some(revision));
    assert_eq!(
        created.body["hardware_addrs"][0], "52:54:00:aa:bb:01",
        "MACs are normalized"
    );

    let shown = api
        .get(&format!("/api/v1/machines/{uuid}"))
        .await
        .expect(200);
    assert_eq!(shown.etag(), Some(revision));
    assert_eq!(shown.body["name"], "web1");

    // PATCH with a passing test and a matching If-Match.
    let path = format!("/api/v1/machines/{uuid}");
    let patched = api
        .call_with(
            Method::PATCH,
            &path,
            Some(json!([
                {"op": "test", "path": "/name", "value": "web1"},
                {"op": "replace", "path": "/description", "value": "front end"}
            ])),
            &[("if-match", format!("\"{revision}\""))],
        )
        .await
        .expect(200);
    let new_revision = patched.etag().unwrap();
    assert!(new_revision > revision);
    assert_eq!(patched.body["description"], "front end");

    // The old revision is now stale, for PUT and DELETE alike.
    let mut body = patched.body.clone();
    body["description"] = json!("stale write");
    api.call_with(
        Method::PUT,
        &path,
        Some(body.clone()),
        &[("if-match", revision.to_string())],
    )
    .await
    .expect_error(412, "precondition_failed");
    api.call_with(
        Method::DELETE,
        &path,
        None,
        &[("if-match", revision.to_string())],
    )
    .await
    .expect_error(412, "precondition_failed");
    let put = api
        .call_with(
            Method::PUT,
            &path,
            Some(body),
            &[("if-match", new_revision.to_string())],
        )
        .await
        .expect(200);
    assert_eq!(put.body["description"], "stale write");

    // Params and where effective values come from.
    api.put("/api/v1/profiles/global/params/ntp", json!("pool.ntp.org"))
        .await
        .expect(200);
    api.post(
        "/api/v1/params",
        json!({"name": "console", "schema": {"type": "string"}, "default": "ttyS0"}),
    )
    .await
    .expect(201);
    api.put(&format!("{path}/params/hostname"), json!("web1.example"))
        .await
        .expect(200);
    let effective = api
        .get(&format!("{path}/effective-params"))
        .await
        .expect(200);
    assert_eq!(effective.body["hostname"]["value"], "web1.example");
    assert_eq!(effective.body["rack"]["value"], "r1");
    assert_eq!(effective.body["ntp"]["value"], "pool.ntp.org");
    assert_eq!(effective.body["console"]["value"], "ttyS0");
    // A value that breaks its param's schema is refused.
    api.put(&format!("{path}/params/console"), json!(42))
        .await
        .expect(400);
    assert_eq!(
        api.get(&format!("{path}/params/hostname"))
            .await
            .expect(200)
            .body,
        "web1.example"
    );
    api.delete(&format!("{path}/params/hostname"))
        .await
        .expect(200);
    api.get(&format!("{path}/params/hostname"))
        .await
        .expect_error(404, "not_found");

    // In use: the bootenv and profile cannot go while the machine names them.
    api.delete("/api/v1/bootenvs/discovery")
        .await
        .expect_error(409, "in_use");
    api.delete("/api/v1/profiles/rack1")
        .await
        .expect_error(409, "in_use");
    api.delete(&path).await.expect(200);
    api.get(&path).await.expect_error(404, "not_found");
    api.delete("/api/v1/profiles/rack1").await.expect(200);
    node.running.shutdown().await;
}

#[tokio::test]
async fn lists_filter_sort_and_page() {
    let node = InProcess::start().await;
    let api = &node.client;
    api.post("/api/v1/bootenvs", json!({"name": "flatcar"}))
        .await
        .expect(201);
    for n in 0..25u32 {
        let mut body = machine(n);
        body["params"] = json!({"rack": format!("r{}", n % 3)});
        if n % 5 == 0 {
            body["bootenv"] = json!("flatcar");
        }
        api.post("/api/v1/machines", body).await.expect(201);
    }
    // Indexed filters.
    let by_name = api.get("/api/v1/machines?name=m7").await.expect(200);
    assert_eq!(by_name.body.as_array().unwrap().len(), 1);
    let by_mac = api
        .get("/api/v1/machines?mac=52:54:00:00:00:07")
        .await
        .expect(200);
    assert_eq!(by_mac.body[0]["name"], "m7");
    let by_bootenv = api
        .get("/api/v1/machines?bootenv=flatcar")
        .await
        .expect(200);
    assert_eq!(by_bootenv.body.as_array().unwrap().len(), 5);
    // A param value filter, combined with an indexed one.
    let rack0 = api.get("/api/v1/machines?params.rack=r0").await.expect(200);
    assert_eq!(rack0.body.as_array().unwrap().len(), 9);
    let both = api
        .get("/api/v1/machines?params.rack=r0&bootenv=flatcar")
        .await
        .expect(200);
    assert_eq!(both.body.as_array().unwrap().len(), 2, "m0 and m15");
    // Sorting.
    let sorted = api
        .get("/api/v1/machines?sort=name&desc=true&limit=3")
        .await
        .expect(200);
    let names: Vec<_> = sorted
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["m9", "m8", "m7"]);
    // Offset paging.
    let page = api
        .get("/api/v1/machines?sort=name&limit=10&offset=20")
        .await
        .expect(200);
    assert_eq!(page.body.as_array().unwrap().len(), 5);
    // Cursor paging visits every machine exactly once.
    let mut seen = std::collections::BTreeSet::new();
    let mut path = "/api/v1/machines?limit=7".to_string();
    for _ in 0..10 {
        let page = api.get(&path).await.expect(200);
        for m in page.body.as_array().unwrap() {
            assert!(seen.insert(m["uuid"].as_str().unwrap().to_string()));
        }
        match page.headers.get("x-next-cursor") {
            Some(cursor) => {
                path = format!(
                    "/api/v1/machines?limit=7&cursor={}",
                    cursor.to_str().unwrap()
                )
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    // Linearizable read.
    api.get("/api/v1/machines?consistent=true&limit=1")
        .await
        .expect(200);
    node.running.shutdown().await;
}

/// `/metrics` answers Prometheus text to a token that may read, and nothing
/// without one.
#[tokio::test]
async fn metrics_need_a_read_token_and_speak_prometheus_text() {
    let node = InProcess::start().await;
    let admin = &node.client;
    let anonymous = Client::for_node(node.running.api_addr, node.dir.path());
    anonymous
        .get("/metrics")
        .await
        .expect_error(401, "unauthorized");
    let reply = admin
        .http
        .get(admin.url("/metrics"))
        .bearer_auth(admin.token.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let content_type = reply.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = reply.text().await.unwrap();
    assert!(text.contains("cradle_raft_is_leader 1"), "{text}");
    assert!(
        text.contains("# TYPE cradle_dhcp_commit_seconds histogram"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    node.running.shutdown().await;
}
