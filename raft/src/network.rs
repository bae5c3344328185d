//! Peer RPC over gRPC (`proto/raft.proto`): the client side openraft uses to
//! reach other members, the server side that hands their calls to the local
//! Raft, and the transport of forwarded requests ([`crate::forward`]) and
//! pre-votes ([`crate::prevote`]).
//!
//! openraft's messages travel serde_json-encoded in `Payload.data`, except
//! snapshot chunks, whose bytes follow a small JSON header raw (JSON would
//! triple their size). Replies carry `Result<response, RaftError>` so remote
//! Raft errors reach openraft as `RemoteError`, while transport failures
//! become `Unreachable` (peer down: openraft backs off) or `Network`.
//!
//! One lazily connected tonic `Channel` per peer is cached and shared by
//! every connection openraft makes to that peer and by write forwarding.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RPCTypes, Raft, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};
use tonic::{Code, Request, Response, Status};

use crate::forward::{
    unix_ms, CallError, ForwardEnvelope, ForwardFailure, ForwardReply, ForwardRequest, LeaderOps,
    FORWARD_CLOCK_MARGIN,
};
use crate::prevote::{self, LeaderContact, PreVoteRequest, PreVoteResponse};
use crate::proto::raft_peer_client::RaftPeerClient;
use crate::proto::raft_peer_server::RaftPeer;
use crate::proto::Payload as WirePayload;
use crate::types::{NodeId, NodeInfo, TypeConfig};

/// Largest gRPC message either side accepts: bounds AppendEntries batches
/// (`max_payload_entries` entries) and snapshot chunks.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// How long establishing a TCP (+TLS) connection to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);
/// HTTP/2 pings detect a dead peer on an idle connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds the JSON header in front of a snapshot chunk.
const MAX_CHUNK_HEADER_BYTES: usize = 1 << 20;

/// With mutual TLS: decides, per call, whether a peer's leaf certificate
/// (DER) still belongs to the cluster. The TLS handshake has already checked
/// it was signed by the cluster CA; this refuses certificates of removed
/// members.
#[derive(Clone)]
pub struct PeerAdmission(pub Arc<AdmitFn>);

/// Given a peer's leaf certificate (DER), whether to admit it.
pub type AdmitFn = dyn Fn(&[u8]) -> bool + Send + Sync;

impl fmt::Debug for PeerAdmission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerAdmission(..)")
    }
}

/// Mutual TLS for peer RPC: each node presents a certificate signed by the
/// cluster CA and accepts only peers that present one too.
#[derive(Clone)]
pub struct PeerTls {
    /// The cluster CA certificate (PEM) that signs every node certificate.
    pub ca_pem: Vec<u8>,
    /// This node's certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// This node's private key (PEM).
    pub key_pem: Vec<u8>,
    /// Name to verify in peers' certificates. `None` verifies the host part
    /// of each peer's `rpc_addr` (which must then be in its certificate).
    pub server_name: Option<String>,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("PeerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// rustls 0.23 needs a process-wide crypto provider for the server
    /// side; install ring unless the application already installed one.
    pub(crate) fn install_crypto_provider() {
        // An error only means a provider is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    pub(crate) fn client_config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        match &self.server_name {
            Some(name) => config.domain_name(name.clone()),
            None => config,
        }
    }
}

// ---------------------------------------------------------------------------
// Encoding.

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Everything of an `InstallSnapshotRequest` except its data.
#[derive(Serialize, Deserialize)]
struct ChunkHeader {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, NodeInfo>,
    offset: u64,
    done: bool,
}

/// `u32 BE header length, JSON header, raw chunk bytes`.
fn encode_chunk(req: InstallSnapshotRequest<TypeConfig>) -> Result<Vec<u8>, String> {
    let header = ChunkHeader {
        vote: req.vote,
        meta: req.meta,
        offset: req.offset,
        done: req.done,
    };
    let header = encode(&header).map_err(|e| e.to_string())?;
    let header_len = u32::try_from(header.len()).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(4 + header.len() + req.data.len());
    out.extend_from_slice(&header_len.to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&req.data);
    Ok(out)
}

fn decode_chunk(mut bytes: Vec<u8>) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
    let len_bytes: [u8; 4] = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("snapshot chunk shorter than its length prefix")?;
    let header_len = u32::from_be_bytes(len_bytes) as usize;
    if header_len > MAX_CHUNK_HEADER_BYTES || 4 + header_len > bytes.len() {
        return Err(format!("bad snapshot chunk header length {header_len}"));
    }
    let header: ChunkHeader = decode(&bytes[4..4 + header_len]).map_err(|e| e.to_string())?;
    let data = bytes.split_off(4 + header_len);
    Ok(InstallSnapshotRequest {
        vote: header.vote,
        meta: header.meta,
        offset: header.offset,
        data,
        done: header.done,
    })
}

// ---------------------------------------------------------------------------
// Client side.

/// The cached channels to peers, shared by openraft's connections and by
/// forwarding.
pub(crate) struct Peers {
    tls: Option<ClientTlsConfig>,
    /// The local address connections leave from, if not the system's choice.
    source_ip: Option<std::net::IpAddr>,
    /// Peer id -> (address the channel was made for, channel).
    channels: Mutex<HashMap<NodeId, (String, Channel)>>,
    /// Tests cut a node off: every call out fails as unreachable and every
    /// call in is refused, as with a pulled cable.
    cut: AtomicBool,
    /// Peer id -> when a Raft call to it last got an answer: how the leader
    /// knows which followers are alive.
    answered: std::sync::Mutex<HashMap<NodeId, std::time::Instant>>,
}

impl Peers {
    pub(crate) fn new(tls: Option<ClientTlsConfig>) -> Self {
        Peers {
            tls,
            source_ip: None,
            channels: Mutex::new(HashMap::new()),
            cut: AtomicBool::new(false),
            answered: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn note_answer(&self, peer: NodeId) {
        if let Ok(mut answered) = self.answered.lock() {
            answered.insert(peer, std::time::Instant::now());
        }
    }

    /// How long ago `peer` last answered a Raft call from this node, if
    /// ever.
    pub(crate) fn answered_ago(&self, peer: NodeId) -> Option<std::time::Duration> {
        let answered = self.answered.lock().ok()?;
        answered.get(&peer).map(|at| at.elapsed())
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    /// Connections leave from `ip` (when `Some`).
    pub(crate) fn with_source_ip(self, ip: Option<std::net::IpAddr>) -> Self {
        Peers {
            source_ip: ip,
            ..self
        }
    }

    /// The channel to `id` at `addr`, made on first use (without connecting:
    /// tonic connects lazily and reconnects after failures).
    pub(crate) async fn channel(&self, id: NodeId, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().await;
        if let Some((cached_addr, channel)) = channels.get(&id) {
            if cached_addr == addr {
                return Ok(channel.clone());
            }
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .local_address(self.source_ip);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("peer TLS config: {e}"))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(id, (addr.to_string(), channel.clone()));
        Ok(channel)
    }

    /// Sends a [`ForwardRequest`] to `id` at `addr`, waiting at most
    /// `timeout`. The leader refuses it once `deadline` (the caller's, if
    /// any) or the transport bound has passed by its clock.
    pub(crate) async fn forward(
        &self,
        id: NodeId,
        addr: &str,
        req: &ForwardRequest,
        timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<ForwardReply, CallError> {
        if self.is_cut() {
            return Err(CallError::NotSent(format!("node {id}: link cut")));
        }
        let channel = self.channel(id, addr).await.map_err(CallError::NotSent)?;
        let mut act_within = timeout + FORWARD_CLOCK_MARGIN;
        if let Some(deadline) = deadline {
            act_within = act_within.min(deadline.saturating_duration_since(Instant::now()));
        }
        let envelope = ForwardEnvelope {
            deadline_unix_ms: unix_ms()
                .saturating_add(u64::try_from(act_within.as_millis()).unwrap_or(u64::MAX)),
            request: req.clone(),
        };
        let data = encode(&envelope).map_err(|e| CallError::NotSent(e.to_string()))?;
        let mut request = Request::new(WirePayload { data });
        request.set_timeout(timeout);
        let mut peer = client(channel);
        let call = peer.forward(request);
        // tonic's own deadline covers the server; this one also covers a
        // connect that hangs.
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                return Err(CallError::Lost(format!(
                    "no answer from node {id} within {timeout:?}"
                )))
            }
            Ok(Err(status)) if not_sent(&status) => {
                return Err(CallError::NotSent(format!("node {id} at {addr}: {status}")))
            }
            Ok(Err(status)) => {
                return Err(CallError::Lost(format!("node {id} at {addr}: {status}")))
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<ForwardReply, ForwardFailure> = decode(&reply.data)
            .map_err(|e| CallError::Lost(format!("undecodable reply from node {id}: {e}")))?;
        result.map_err(CallError::Remote)
    }
}

impl Peers {
    /// Asks `id` at `addr` for a pre-vote; false when it refuses or does not
    /// answer within `timeout`. A member running a version without pre-vote
    /// answers `Unimplemented`: counted as granted, so a mixed cluster falls
    /// back to plain Raft elections instead of never electing.
    pub(crate) async fn pre_vote(
        &self,
        id: NodeId,
        addr: &str,
        req: &PreVoteRequest,
        timeout: Duration,
    ) -> bool {
        if self.is_cut() {
            return false;
        }
        let Ok(channel) = self.channel(id, addr).await else {
            return false;
        };
        let Ok(data) = encode(req) else {
            return false;
        };
        let mut request = Request::new(WirePayload { data });
        request.set_timeout(timeout);
        let mut peer = client(channel);
        match tokio::time::timeout(timeout, peer.pre_vote(request)).await {
            Ok(Ok(reply)) => {
                decode::<PreVoteResponse>(&reply.into_inner().data).is_ok_and(|r| r.granted)
            }
            Ok(Err(status)) => status.code() == Code::Unimplemented,
            Err(_) => false,
        }
    }
}

fn client(channel: Channel) -> RaftPeerClient<Channel> {
    RaftPeerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Whether the failure happened before the request could reach the peer:
/// only a failed connect (TCP refused or timed out, TLS handshake refused)
/// proves that. tonic marks those with its (private) `ConnectError`.
fn not_sent(status: &Status) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn StdError + 'static)> = status.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        if format!("{err:?}").contains("ConnectError") {
            return true;
        }
        source = err.source();
    }
    false
}

/// Builds openraft connections over the cached channels.
pub(crate) struct NetworkFactory {
    pub(crate) local_id: NodeId,
    pub(crate) peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerConnection {
        // A bad address cannot be reported here; every call reports it.
        let channel = self.peers.channel(target, &node.rpc_addr).await;
        PeerConnection {
            local_id: self.local_id,
            target,
            node: node.clone(),
            channel,
            peers: self.peers.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub(crate) struct PeerConnection {
    local_id: NodeId,
    target: NodeId,
    node: NodeInfo,
    channel: Result<Channel, String>,
    peers: Arc<Peers>,
}

impl PeerConnection {
    /// One unary call: encode, send with a deadline, decode
    /// `Result<Resp, E>`.
    async fn call<Resp, E>(
        &self,
        action: RPCTypes,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, E>>
    where
        Resp: DeserializeOwned,
        E: StdError + DeserializeOwned,
    {
        if self.peers.is_cut() {
            return Err(RPCError::Unreachable(Unreachable::new(&StringError(
                "link cut".into(),
            ))));
        }
        let channel = match &self.channel {
            Ok(channel) => channel.clone(),
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(&StringError(
                    e.clone(),
                ))))
            }
        };
        let ttl = option.hard_ttl();
        let mut request = Request::new(WirePayload { data });
        request.set_timeout(ttl);
        let mut client = client(channel);
        let result = match action {
            RPCTypes::AppendEntries => client.append_entries(request).await,
            RPCTypes::Vote => client.vote(request).await,
            RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = match result {
            Ok(reply) => reply.into_inner(),
            Err(status) => return Err(self.status_error(action, ttl, status)),
        };
        self.peers.note_answer(self.target);
        let decoded: Result<Resp, E> =
            decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }

    fn status_error<E: StdError>(
        &self,
        action: RPCTypes,
        ttl: Duration,
        status: Status,
    ) -> RPCError<NodeId, NodeInfo, E> {
        match status.code() {
            // Peer down, refusing or unreachable: openraft backs off.
            Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            // No answer in time from a peer we could once reach: most often
            // a cut link. Replication backs off instead of retrying (and
            // logging) every heartbeat; votes just time out.
            Code::DeadlineExceeded | Code::Cancelled if action != RPCTypes::Vote => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            Code::DeadlineExceeded | Code::Cancelled => RPCError::Timeout(Timeout {
                action,
                id: self.local_id,
                target: self.target,
                timeout: ttl,
            }),
            _ => RPCError::Network(NetworkError::new(&status)),
        }
    }
}

/// Lets a plain message travel where openraft wants an error value.
#[derive(Debug)]
struct StringError(String);

impl fmt::Display for StringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for StringError {}

fn encode_error<E>(e: impl fmt::Display) -> RPCError<NodeId, NodeInfo, E>
where
    E: StdError,
{
    RPCError::Network(NetworkError::new(&StringError(format!(
        "encoding request: {e}"
    ))))
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let data = encode(&rpc).map_err(encode_error)?;
        self.call(RPCTypes::AppendEntries, data, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let data = encode_chunk(rpc).map_err(encode_error)?;
        self.call(RPCTypes::InstallSnapshot, data, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let data = encode(&rpc).map_err(encode_error)?;
        self.call(RPCTypes::Vote, data, &option).await
    }
}

// ---------------------------------------------------------------------------
// Server side.

/// The gRPC service: hands peers' calls to the local Raft.
pub(crate) struct PeerService {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) leader: Arc<LeaderOps>,
    pub(crate) admission: Option<PeerAdmission>,
    /// Updated whenever a leader's AppendEntries or snapshot is accepted.
    pub(crate) contact: Arc<LeaderContact>,
    /// A pre-vote is refused while a leader was heard within this window.
    pub(crate) pre_vote_window: Duration,
    pub(crate) peers: Arc<Peers>,
}

impl PeerService {
    /// Refuses callers whose certificate the application no longer admits
    /// (a removed member), and every caller while a test has cut this node
    /// off. Without TLS there is no certificate to judge.
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.peers.is_cut() {
            return Err(Status::unavailable("link cut"));
        }
        let Some(admission) = &self.admission else {
            return Ok(());
        };
        let certs = request.peer_certs();
        let leaf = certs.as_ref().and_then(|chain| chain.first());
        match leaf {
            Some(cert) if (admission.0)(cert.as_ref()) => Ok(()),
            Some(_) => Err(Status::permission_denied(
                "this node is no longer a cluster member",
            )),
            None => Err(Status::unauthenticated("a cluster certificate is required")),
        }
    }
}

fn bad_request(e: impl fmt::Display) -> Status {
    Status::invalid_argument(format!("undecodable request: {e}"))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<WirePayload>, Status> {
    let data = encode(value).map_err(|e| Status::internal(format!("encoding reply: {e}")))?;
    Ok(Response::new(WirePayload { data }))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        request: Request<WirePayload>,
    ) -> Result<Response<WirePayload>, Status> {
        self.admit(&request)?;
        let req: AppendEntriesRequest<TypeConfig> =
            decode(&request.into_inner().data).map_err(bad_request)?;
        let result = self.raft.append_entries(req).await;
        if matches!(&result, Ok(resp) if !matches!(resp, AppendEntriesResponse::HigherVote(_))) {
            self.contact.touch();
        }
        reply(&result)
    }

    async fn vote(&self, request: Request<WirePayload>) -> Result<Response<WirePayload>, Status> {
        self.admit(&request)?;
        let req: VoteRequest<NodeId> = decode(&request.into_inner().data).map_err(bad_request)?;
        let result = self.raft.vote(req).await;
        reply(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<WirePayload>,
    ) -> Result<Response<WirePayload>, Status> {
        self.admit(&request)?;
        let req = decode_chunk(request.into_inner().data).map_err(bad_request)?;
        let vote = req.vote;
        let result = self.raft.install_snapshot(req).await;
        if matches!(&result, Ok(resp) if resp.vote == vote) {
            self.contact.touch();
        }
        reply(&result)
    }

    async fn forward(
        &self,
        request: Request<WirePayload>,
    ) -> Result<Response<WirePayload>, Status> {
        self.admit(&request)?;
        let envelope: ForwardEnvelope = decode(&request.into_inner().data).map_err(bad_request)?;
        let result = if unix_ms() >= envelope.deadline_unix_ms {
            // Its sender has given up on it, or its caller's deadline has
            // passed: acting now would apply a write whose client was told
            // it failed, or work nobody waits for.
            Err(ForwardFailure::Expired(
                "the forwarded request arrived after its deadline (a queue or a delayed link, or clocks far apart)".into(),
            ))
        } else {
            // Executed here or refused with NotLeader: never forwarded on,
            // so a request cannot loop between nodes with stale leader
            // views.
            self.leader.execute(envelope.request).await
        };
        reply(&result)
    }

    async fn pre_vote(
        &self,
        request: Request<WirePayload>,
    ) -> Result<Response<WirePayload>, Status> {
        self.admit(&request)?;
        let req: PreVoteRequest = decode(&request.into_inner().data).map_err(bad_request)?;
        let granted = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            prevote::grant(&m, &self.contact, self.pre_vote_window)
        };
        tracing::debug!(
            candidate = req.candidate,
            term = req.term,
            granted,
            "pre-vote"
        );
        reply(&PreVoteResponse { granted })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Payload;
    use openraft::{CommittedLeaderId, LogId, StoredMembership};

    #[test]
    fn snapshot_chunk_round_trips_with_raw_data() {
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 42)),
            last_membership: StoredMembership::default(),
            snapshot_id: "s-1".to_string(),
        };
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let req = InstallSnapshotRequest {
            vote: Vote::new_committed(3, 1),
            meta: meta.clone(),
            offset: 4096,
            data: data.clone(),
            done: true,
        };
        let bytes = encode_chunk(req).unwrap();
        // Raw bytes plus a small header, not a JSON array of numbers.
        assert!(
            bytes.len() < data.len() + 1024,
            "encoded {} bytes",
            bytes.len()
        );
        let back = decode_chunk(bytes).unwrap();
        assert_eq!(back.meta, meta);
        assert_eq!(back.offset, 4096);
        assert!(back.done);
        assert_eq!(back.data, data);
        assert!(decode_chunk(vec![0, 0, 0, 200, b'{']).is_err());
        assert!(decode_chunk(vec![1]).is_err());
    }

    #[tokio::test]
    async fn refused_connection_counts_as_not_sent() {
        // A port that was just free: nothing listens there.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let peers = Peers::new(None);
        let req = ForwardRequest::Write(Payload(b"x".to_vec()));
        let result = peers
            .forward(9, &addr, &req, Duration::from_secs(2), None)
            .await;
        assert!(matches!(result, Err(CallError::NotSent(_))), "{result:?}");
        // The channel is cached per peer and address.
        let a = peers.channel(9, &addr).await.unwrap();
        let b = peers.channel(9, &addr).await.unwrap();
        drop((a, b));
        assert_eq!(peers.channels.lock().await.len(), 1);
        assert!(peers.channel(10, "not a valid address").await.is_err());
    }
}
