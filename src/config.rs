//! Every setting of `cradle server`, read from flags or `CRADLE_*` environment
//! variables and defined once here: the flag, its variable, its default and
//! the doc that `--help` prints all come from these declarations.
//!
//! There is no configuration file: everything deeper is replicated state,
//! changed through the API.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Settings of every node: `cradle server`, `init` and `join`.
#[derive(Debug, Clone, Args)]
pub struct ServerSettings {
    /// Directory for the database, TLS material and snapshots. Created if missing.
    #[arg(long, env = "CRADLE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// HTTPS API listener.
    #[arg(long, env = "CRADLE_API_LISTEN", default_value = "0.0.0.0:8443")]
    pub api_listen: SocketAddr,

    /// Peer RPC listener (Raft and write forwarding between members).
    #[arg(long, env = "CRADLE_RPC_LISTEN", default_value = "0.0.0.0:8444")]
    pub rpc_listen: SocketAddr,

    /// Address other members and clients use to reach this node's API and
    /// peer RPC (host or IP, no port). Defaults to the API listener's address,
    /// or 127.0.0.1 when that is unspecified.
    #[arg(long, env = "CRADLE_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,

    /// This node's Raft id. A single node started on an empty data dir is node 1.
    #[arg(long, env = "CRADLE_NODE_ID", default_value_t = 1)]
    pub node_id: u64,

    /// PEM certificate chain to serve instead of the generated one.
    #[arg(long, env = "CRADLE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "CRADLE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Extra host names or addresses for the generated server certificate
    /// (comma-separated). Only used when the certificate is first created.
    #[arg(long, env = "CRADLE_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<String>,

    /// Password for the `admin` user created on first start: set from
    /// [`ServerArgs`], since only a founding node creates it. `cradle join`
    /// has no such flag.
    #[arg(skip)]
    pub admin_password: Option<String>,

    /// Raft heartbeat interval.
    #[arg(long, env = "CRADLE_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,

    /// Lower bound of the randomized election timeout.
    #[arg(long, env = "CRADLE_ELECTION_MIN_MS", default_value_t = 300)]
    pub election_min_ms: u64,

    /// Upper bound of the randomized election timeout.
    #[arg(long, env = "CRADLE_ELECTION_MAX_MS", default_value_t = 600)]
    pub election_max_ms: u64,

    /// Take a snapshot and compact the log after this many entries.
    #[arg(long, env = "CRADLE_SNAPSHOT_EVERY", default_value_t = 20_000)]
    pub snapshot_every: u64,

    /// How long a write waits for a leader before failing with `no_leader`.
    #[arg(long, env = "CRADLE_NO_LEADER_WAIT_MS", default_value_t = 5_000)]
    pub no_leader_wait_ms: u64,

    /// Largest accepted API request body.
    #[arg(long, env = "CRADLE_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Most API connections open at once, TLS handshakes included; a new one
    /// over the cap is closed at once. Each holds a file descriptor and about
    /// 10 KiB when idle: the server raises its soft open-files limit to the
    /// hard one at start and, if this cap plus 1024 descriptors kept for
    /// RocksDB and peer RPC does not fit, lowers the cap with a warning. 4096
    /// (about 40 MiB) is far more than operators, UIs and automation need.
    #[arg(
        long,
        env = "CRADLE_API_MAX_CONNECTIONS",
        default_value_t = 4096,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub api_max_connections: usize,

    /// Most API connections open at once from one source (an IPv4 address or
    /// an IPv6 /64); more are closed at once. A browser opens about six, a
    /// NAT gateway or CI runner a few dozen; at 128, one source holds at most
    /// a thirty-second of the default total.
    #[arg(
        long,
        env = "CRADLE_API_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 128,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub api_max_connections_per_source: usize,

    /// Time from accepting an API connection to the end of its TLS handshake.
    /// A handshake takes two round trips: 10 s allows slow, lossy links, and a
    /// client that connects and sends nothing gives its place back soon.
    #[arg(
        long,
        env = "CRADLE_API_HANDSHAKE_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub api_handshake_timeout_ms: u64,

    /// Time a client has to send a whole request head (request line and
    /// headers): from the handshake to its first request bytes, and for each
    /// HTTP/1 request from when the server starts waiting for it, so an
    /// HTTP/1 keep-alive connection idle this long is closed. Real clients
    /// send a head at once; 10 s stops clients that drip it byte by byte.
    #[arg(
        long,
        env = "CRADLE_API_HEADER_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub api_header_timeout_ms: u64,

    /// An API connection that reads and writes nothing for this long is
    /// closed (HTTP/2 connections between requests, clients that stop
    /// reading). Must stay well above the event stream's 15 s keep-alive, or
    /// quiet subscribers are cut off: 60 s is four keep-alive intervals.
    #[arg(
        long,
        env = "CRADLE_API_IDLE_TIMEOUT_MS",
        default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub api_idle_timeout_ms: u64,

    /// Requests the API handles at once (from the request head to the
    /// response head; an open event stream does not hold a place). One over
    /// the cap waits up to --api-busy-wait-ms for room, then gets `503 busy`
    /// with `Retry-After`: under a burst, the node answers quickly, either
    /// way, instead of queueing without bound.
    #[arg(
        long,
        env = "CRADLE_API_MAX_REQUESTS",
        default_value_t = 256,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub api_max_requests: usize,

    /// How long a request over --api-max-requests (or a list over
    /// --api-max-lists, for ten times as long) waits for room before `503 busy`.
    #[arg(long, env = "CRADLE_API_BUSY_WAIT_MS", default_value_t = 100)]
    pub api_busy_wait_ms: u64,

    /// Object lists run at once, each on a blocking thread off the async
    /// workers (a list reads up to 20,000 objects). Two leave the other cores
    /// of a small appliance to DHCP, TFTP and the API's other requests.
    #[arg(
        long,
        env = "CRADLE_API_MAX_LISTS",
        default_value_t = 2,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub api_max_lists: usize,

    /// Lifetime of tokens issued by `POST /api/v1/auth/token` unless the
    /// request asks for less.
    #[arg(long, env = "CRADLE_TOKEN_TTL_SECS", default_value_t = 8 * 3600)]
    pub token_ttl_secs: u64,

    /// Events kept for resuming the event stream.
    #[arg(long, env = "CRADLE_EVENT_RETENTION", default_value_t = 100_000)]
    pub event_retention: u64,

    /// Log format: `text` or `json` (one object per line, for journald).
    #[arg(long, env = "CRADLE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// Settings for `cradle server` and `cradle init`: every node setting, and
/// those only a node that may found a cluster uses.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub settings: ServerSettings,

    /// Password for the `admin` user created on first start. If unset, a
    /// random one is generated and printed once.
    #[arg(long, env = "CRADLE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
}

impl ServerArgs {
    /// The node's settings, carrying the founding-only ones.
    pub fn into_settings(self) -> ServerSettings {
        ServerSettings {
            admin_password: self.admin_password,
            ..self.settings
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Whether to write ANSI colour to a stream: only to a terminal, and never
/// when `NO_COLOR` is set to anything but the empty string
/// (<https://no-color.org>).
pub fn use_colour(stream_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stream_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

impl ServerSettings {
    /// The host part peers and clients are told to use.
    pub fn advertised_host(&self) -> String {
        if let Some(host) = &self.advertise_host {
            return host.clone();
        }
        let ip = self.api_listen.ip();
        if ip.is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            ip.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let check = |terminal: bool, no_color: Option<&str>, expected: bool| {
            assert_eq!(
                use_colour(terminal, no_color.map(OsStr::new)),
                expected,
                "terminal {terminal}, NO_COLOR {no_color:?}"
            );
        };
        check(true, None, true);
        check(true, Some(""), true);
        check(true, Some("1"), false);
        check(false, None, false);
        check(false, Some(""), false);
        check(false, Some("1"), false);
    }
}
