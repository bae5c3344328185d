//! The `cradle` client binary against a live node: login pins the CA,
//! verbs round-trip objects, bad input fails clearly.

use std::path::Path;

use serde_json::Value;

use crate::common::{free_port, InProcess, ADMIN_PASSWORD};

pub(crate) struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub(crate) async fn cradle(config_dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cradle"))
        .args(args)
        .env("CRADLE_CONFIG_DIR", config_dir)
        .env("CRADLE_PASSWORD", ADMIN_PASSWORD)
        .env_remove("CRADLE_ENDPOINT")
        .env_remove("CRADLE_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cradle");
    if let Some(mut input) = child.stdin.take() {
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).await.unwrap();
        }
    }
    let output = child.wait_with_output().await.unwrap();
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_logs_in_with_a_pinned_ca_and_manages_objects() {
    let node = InProcess::start().await;
    let config = tempfile::tempdir().unwrap();
    let dir = config.path();
    let endpoint = format!("https://{}", node.running.api_addr);
    let fingerprint = node.running.ca_fingerprint.clone();

    // No pin: refused, and the fingerprint is shown to confirm.
    let run = cradle(dir, &["login", &endpoint, "--user", "admin"], None).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains(&fingerprint) || run.stdout.contains(&fingerprint),
        "{}",
        run.stderr
    );
    assert!(!dir.join("config.json").exists());
    // A wrong pin: refused.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let run = cradle(
        dir,
        &["login", &endpoint, "--user", "admin", "--ca-hash", &wrong],
        None,
    )
    .await;
    assert!(!run.ok, "{}", run.stdout);
    assert!(!dir.join("config.json").exists());
    // The right pin.
    let run = cradle(
        dir,
        &[
            "login",
            &endpoint,
            "--user",
            "admin",
            "--ca-hash",
            &fingerprint,
        ],
        None,
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert!(dir.join("config.json").exists());

    let run = cradle(
        dir,
        &["bootenvs", "create", "-f", "-"],
        Some("name: discovery\n"),
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    let run = cradle(
        dir,
        &[
            "machines",
            "create",
            "--name",
            "c1",
            "--mac",
            "52:54:00:12:34:56",
            "--bootenv",
            "discovery",
        ],
        None,
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    let run = cradle(
        dir,
        &["machines", "list", "-o", "json", "bootenv=discovery"],
        None,
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    let list: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(list[0]["name"], "c1");
    let run = cradle(dir, &["machines", "list"], None).await;
    assert!(
        run.ok && run.stdout.contains("52:54:00:12:34:56"),
        "{}",
        run.stdout
    );
    let run = cradle(
        dir,
        &["machines", "params", "set", "c1", "rack", "r12"],
        None,
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    let run = cradle(
        dir,
        &["machines", "effective-params", "c1", "-o", "json"],
        None,
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    let effective: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(effective["rack"]["value"], "r12");
    let run = cradle(
        dir,
        &[
            "machines",
            "patch",
            "c1",
            "--set",
            "description=rack twelve",
        ],
        None,
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    let run = cradle(dir, &["machines", "show", "c1", "-o", "yaml"], None).await;
    assert!(
        run.ok && run.stdout.contains("rack twelve"),
        "{}",
        run.stdout
    );

    // Bad input: a clear error and a non-zero exit, nothing created.
    let run = cradle(dir, &["machines", "create", "-f", "-"], Some("{not json")).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("error"), "{}", run.stderr);
    let run = cradle(
        dir,
        &["machines", "create", "--name", "bad", "--mac", "zz"],
        None,
    )
    .await;
    assert!(!run.ok);
    let run = cradle(dir, &["machines", "list", "-o", "json"], None).await;
    assert_eq!(
        serde_json::from_str::<Value>(&run.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let run = cradle(dir, &["machines", "bogus-verb"], None).await;
    assert!(!run.ok);

    let run = cradle(dir, &["machines", "delete", "c1"], None).await;
    assert!(run.ok, "{}", run.stderr);
    let run = cradle(dir, &["machines", "show", "c1"], None).await;
    assert!(
        !run.ok && run.stderr.contains("not_found"),
        "{}",
        run.stderr
    );
    node.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_timeout_bounds_a_call_to_a_member_that_never_answers() {
    // Accepts TCP connections (the kernel completes them) but never speaks
    // TLS, like a hung member.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("https://{}", silent.local_addr().unwrap());
    let config = tempfile::tempdir().unwrap();
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        cradle(
            config.path(),
            &["--timeout", "1", "login", &endpoint, "--user", "admin"],
            None,
        ),
    )
    .await
    .expect("the call gives up well within 30 s");
    assert!(!run.ok);
    assert!(
        run.stderr.contains(&endpoint) && run.stderr.contains("--timeout"),
        "{}",
        run.stderr
    );

    // Zero is refused before anything is sent.
    let run = cradle(
        config.path(),
        &["--timeout", "0", "login", &endpoint, "--user", "admin"],
        None,
    )
    .await;
    assert!(!run.ok);
    assert!(run.stderr.contains("'--timeout <SECS>'"), "{}", run.stderr);
    drop(silent);
}

#[test]
fn cli_log_lines_carry_no_colour_when_stderr_is_not_a_terminal() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cradle"))
        .arg("server")
        .env("CRADLE_DATA_DIR", data.path())
        .env("CRADLE_API_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("CRADLE_DHCP_OFF", "true")
        .env("CRADLE_RPC_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("CRADLE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("CRADLE_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("CRADLE_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cradle server");
    let stderr = child.stderr.take().unwrap();
    // Lines until the node says it serves (or exits); the reader ends when
    // the child is killed, so the test cannot hang on it.
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let done = line.contains("cradle serving");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let lines = reader.join().unwrap();
    assert!(
        lines.iter().any(|l| l.contains("cradle serving")),
        "{lines:#?}"
    );
    for line in &lines {
        assert!(!line.contains('\x1b'), "ANSI escape in {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_founding_node_writes_cluster_json() {
    use std::os::unix::fs::PermissionsExt as _;

    let node = InProcess::start().await;
    let path = node.dir.path().join("cluster.json");
    let info: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(info["ca_fingerprint"], node.running.ca_fingerprint.as_str());
    assert!(node.running.ca_fingerprint.starts_with("sha256:"));
    assert_eq!(
        info["api_url"],
        format!("https://127.0.0.1:{}", node.running.api_addr.port()).as_str()
    );
    assert_eq!(info["node_id"], 1);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    assert!(!node.dir.path().join("cluster.json.tmp").exists());

    // What the file says is enough to log in.
    let config = tempfile::tempdir().unwrap();
    let run = cradle(
        config.path(),
        &[
            "login",
            info["api_url"].as_str().unwrap(),
            "--user",
            "admin",
            "--ca-hash",
            info["ca_fingerprint"].as_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    node.running.shutdown().await;
}
