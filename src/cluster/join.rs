//! The joining side of `cradle join`: trust the cluster's CA only if it
//! matches the pinned hash, send a CSR with the join token, and keep the
//! certificate the cluster signs.

use std::path::Path;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use super::state::parse_join_token;
use super::Identity;
use crate::client::{
    check_pin, check_presented_chain, fetch_ca_unverified, Body, Client, Endpoint, CONNECT_TIMEOUT,
};
use crate::config::ServerSettings;
use crate::tls;

/// `POST /api/v1/cluster/join`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// `<id>.<secret>` from `cradle token create`.
    pub token: String,
    /// PKCS#10 request for the joining node's key.
    pub csr_pem: String,
    /// Where peers reach the joining node's RPC and API (`host:port`).
    pub rpc_addr: String,
    pub api_addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinResponse {
    pub node_id: u64,
    pub cert_pem: String,
    pub ca_pem: String,
    /// The answering node's clock, so the joiner can warn about skew.
    pub server_time_unix: u64,
}

/// How far a joining node's clock may be from the cluster's before it warns.
const CLOCK_SKEW_WARN_SECS: u64 = 5;

/// Joins the cluster at `url` unless `settings.data_dir` already holds a node
/// identity. On success the data dir holds the CA, this node's certificate
/// and key, and `node.json`.
pub async fn join(
    settings: &ServerSettings,
    token: &str,
    ca_hash: &str,
    url: &str,
) -> anyhow::Result<()> {
    let data_dir = &settings.data_dir;
    if let Some(identity) = Identity::load(data_dir)? {
        tracing::info!(
            node_id = identity.node_id,
            "data dir already holds a member; not joining again"
        );
        return Ok(());
    }
    if parse_join_token(token).is_none() {
        bail!("the join token is malformed: expected <id>.<secret> as `cradle token create` prints it");
    }
    let endpoint = Endpoint::parse(url)?;
    let offered = fetch_ca_unverified(&endpoint, CONNECT_TIMEOUT)
        .await
        .with_context(|| format!("fetching the cluster CA from {url}"))?;
    let presented = tls::fingerprint_pem(&offered.ca_pem)?;
    check_pin(&presented, Some(ca_hash), None)?;
    check_presented_chain(&endpoint, &offered.presented, &offered.ca_pem)?;

    let host = settings.advertised_host();
    let mut names = settings.tls_san.clone();
    names.push(host.clone());
    let (csr_pem, key_pem) = tls::new_csr(&names)?;
    let request = JoinRequest {
        token: token.trim().to_string(),
        csr_pem,
        rpc_addr: format!("{host}:{}", settings.rpc_listen.port()),
        api_addr: format!("{host}:{}", settings.api_listen.port()),
    };
    let client = Client::new(endpoint, &offered.ca_pem, None, CONNECT_TIMEOUT)?;
    let reply = client
        .call(
            reqwest::Method::POST,
            &["cluster", "join"],
            &[],
            Body::Json(serde_json::to_value(&request)?),
            None,
        )
        .await
        .context("the cluster refused the join")?;
    let response: JoinResponse = serde_json::from_value(reply.body)
        .context("the cluster's join answer is not understood")?;
    if response.ca_pem.trim() != offered.ca_pem.trim() {
        bail!("the cluster answered with a different CA than the pinned one; refusing");
    }
    let now = crate::clock::unix_now();
    if now.abs_diff(response.server_time_unix) > CLOCK_SKEW_WARN_SECS {
        tracing::warn!(
            local = now,
            cluster = response.server_time_unix,
            "THIS NODE'S CLOCK IS FAR FROM THE CLUSTER'S: lease and token times come from the leader, but fix NTP"
        );
    }
    write_identity(data_dir, &response, &key_pem)?;
    tracing::info!(
        node_id = response.node_id,
        "joined; waiting to be added as a learner"
    );
    Ok(())
}

fn write_identity(data_dir: &Path, response: &JoinResponse, key_pem: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(data_dir)?;
    std::fs::write(data_dir.join(tls::CA_CERT_FILE), &response.ca_pem)?;
    std::fs::write(data_dir.join(tls::SERVER_CERT_FILE), &response.cert_pem)?;
    let mut key = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(data_dir.join(tls::SERVER_KEY_FILE))?;
    key.write_all(key_pem.as_bytes())?;
    key.sync_all()?;
    // Last: its presence means the join finished.
    Identity {
        node_id: response.node_id,
        founder: false,
    }
    .save(data_dir)?;
    Ok(())
}
