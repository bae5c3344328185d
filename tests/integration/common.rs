//! In-process nodes and an HTTPS client that pins a node's CA. Nodes as
//! child processes come from `cluster_harness` (one node is a cluster of
//! one).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub use cradle::testkit::ADMIN_PASSWORD;

/// Settings for a node on loopback with the given data dir and ports
/// (0 = any free port).
pub fn settings(data_dir: &Path, api_port: u16, rpc_port: u16) -> cradle::config::ServerSettings {
    settings_with(data_dir, api_port, rpc_port, &[])
}

/// [`settings`] with extra flags, e.g. `&["--api-idle-timeout-ms", "500"]`.
pub fn settings_with(
    data_dir: &Path,
    api_port: u16,
    rpc_port: u16,
    extra: &[&str],
) -> cradle::config::ServerSettings {
    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: cradle::config::ServerArgs,
    }
    let data = data_dir.display().to_string();
    let api = format!("127.0.0.1:{api_port}");
    let rpc = format!("127.0.0.1:{rpc_port}");
    let base = [
        "test",
        "--data-dir",
        &data,
        "--api-listen",
        &api,
        "--rpc-listen",
        &rpc,
        "--admin-password",
        ADMIN_PASSWORD,
        "--election-min-ms",
        "150",
        "--election-max-ms",
        "300",
        "--heartbeat-ms",
        "50",
    ];
    // Port 67 is one per host: DHCP only where a test asks for it.
    let dhcp_off: &[&str] = if extra.contains(&"--dhcp-listen") {
        &[]
    } else {
        &["--dhcp-off"]
    };
    Wrapper::parse_from(base.iter().chain(extra).chain(dhcp_off))
        .args
        .into_settings()
}

/// A node running inside the test process. Its clock is adjustable:
/// [`InProcess::advance_clock`] moves time forward instead of sleeping.
pub struct InProcess {
    pub running: cradle::server::Running,
    pub client: Client,
    pub clock: cradle::clock::Clock,
    pub dir: tempfile::TempDir,
}

impl InProcess {
    pub async fn start() -> InProcess {
        Self::start_with(&[]).await
    }

    /// [`InProcess::start`] with extra server flags.
    pub async fn start_with(extra: &[&str]) -> InProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = cradle::clock::Clock::adjustable();
        let mut settings = settings_with(dir.path(), 0, 0, extra);
        settings.clock = clock.clone();
        let running = cradle::server::start(settings).await.expect("node starts");
        let client = Client::for_node(running.api_addr, dir.path())
            .login("admin", ADMIN_PASSWORD)
            .await;
        InProcess {
            running,
            client,
            clock,
            dir,
        }
    }

    /// Moves the node's clock forward (token lifetimes, join-token expiry).
    pub fn advance_clock(&self, by: Duration) {
        assert!(self.clock.advance(by), "the node's clock is adjustable");
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An HTTPS client for one node, trusting only that node's CA.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
    /// The node's data dir, where its CA certificate is.
    pub data_dir: PathBuf,
    /// Whether the CA was there to trust when the client was made.
    pub trusts_ca: bool,
}

/// A response reduced to what tests look at.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn etag(&self) -> Option<u64> {
        self.headers
            .get("etag")?
            .to_str()
            .ok()?
            .trim_matches('"')
            .parse()
            .ok()
    }

    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected reply: {:?}",
            self.body
        );
        self
    }

    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected reply: {:?}",
            self.body
        );
        assert_eq!(self.code(), code, "unexpected error body: {:?}", self.body);
        assert!(self.body["message"].as_str().is_some_and(|m| !m.is_empty()));
        self
    }
}

impl Client {
    pub fn for_node(api_addr: SocketAddr, data_dir: &Path) -> Client {
        cradle::tls::install_crypto_provider();
        let ca_pem = std::fs::read_to_string(data_dir.join("ca.pem")).unwrap_or_default();
        let config = if ca_pem.is_empty() {
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        } else {
            cradle::tls::client_config_for_ca(&ca_pem).expect("CA config")
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Client {
            http,
            base: format!("https://{api_addr}"),
            token: None,
            data_dir: data_dir.to_path_buf(),
            trusts_ca: !ca_pem.is_empty(),
        }
    }

    /// The CA certificate the client trusts.
    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.join("ca.pem")
    }

    /// Whether the client was made before its node wrote the CA.
    pub fn ca_pem_missing(&self) -> bool {
        !self.trusts_ca
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn login(mut self, user: &str, password: &str) -> Client {
        let reply = self
            .http
            .post(self.url("/api/v1/auth/token"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .expect("token request");
        assert!(
            reply.status().is_success(),
            "login failed: {}",
            reply.status()
        );
        let grant: Value = reply.json().await.expect("grant");
        self.token = Some(grant["token"].as_str().expect("token").to_string());
        self
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call_with(method, path, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, String)],
    ) -> Reply {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        Self::reduce(response).await
    }

    pub async fn raw(&self, method: Method, path: &str, body: Vec<u8>) -> Reply {
        let mut request = self.http.request(method, self.url(path)).body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .header("content-type", "application/json")
            .send()
            .await
            .expect("request sent");
        Self::reduce(response).await
    }

    async fn reduce(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, None).await
    }
}

/// A machine body with a distinct MAC for `n`.
pub fn machine(n: u32) -> Value {
    json!({
        "name": format!("m{n}"),
        "hardware_addrs": [format!("52:54:00:{:02x}:{:02x}:{:02x}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)],
    })
}
