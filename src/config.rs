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

    /// Port other members use to reach this node's peer RPC, when something
    /// forwards to the listener from another port (a NAT rule, a relay).
    /// Defaults to the peer RPC listener's port.
    #[arg(long, env = "CRADLE_ADVERTISE_RPC_PORT")]
    pub advertise_rpc_port: Option<u16>,

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

    /// How long an API write may wait to be proposed (for a leader, or
    /// queued behind other writes) before it fails with `deadline_exceeded`;
    /// nothing is proposed after that. Twice the no-leader wait, so the
    /// deadline only bites when writes queue up behind a stalled one.
    #[arg(
        long,
        env = "CRADLE_WRITE_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub write_timeout_ms: u64,

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

    /// No longer used: how many events are kept is the `event_retention`
    /// pref, the same on every node. Still accepted so that startup scripts
    /// setting it keep working; a node given it logs a warning.
    #[arg(long, env = "CRADLE_EVENT_RETENTION", hide = true)]
    pub event_retention: Option<u64>,

    /// DHCPv4 listener (an IPv4 address): one socket serves every chosen
    /// interface, telling each packet's interface apart (IP_PKTINFO). Port
    /// 67 needs root or CAP_NET_BIND_SERVICE; refused it, the node runs
    /// without DHCP and says so. A second server on the port is an error,
    /// not a share.
    #[arg(
        long,
        env = "CRADLE_DHCP_LISTEN",
        default_value = "0.0.0.0:67",
        value_parser = parse_ipv4_listen
    )]
    pub dhcp_listen: SocketAddr,

    /// An interface DHCP answers on (repeat the flag; comma-separated in the
    /// variable). Default: every non-loopback interface with an IPv4
    /// address. Loopback only when named. A name the host does not have is
    /// an error naming the interfaces it has.
    #[arg(
        long,
        env = "CRADLE_DHCP_INTERFACE",
        value_delimiter = ',',
        value_parser = parse_interface_name
    )]
    pub dhcp_interface: Vec<String>,

    /// proxyDHCP listener (an IPv4 address), where PXE clients ask for boot
    /// options after taking an address from another server.
    #[arg(
        long,
        env = "CRADLE_PROXY_DHCP_LISTEN",
        default_value = "0.0.0.0:4011",
        value_parser = parse_ipv4_listen
    )]
    pub proxy_dhcp_listen: SocketAddr,

    /// UDP port of DHCP clients: where replies not sent through a relay go.
    /// Real clients listen on 68; a lab on unprivileged ports uses another.
    #[arg(
        long,
        env = "CRADLE_DHCP_CLIENT_PORT",
        default_value_t = 68,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub dhcp_client_port: u16,

    /// No DHCP or proxyDHCP socket at all on this node (the variable takes
    /// `true` or `false`).
    #[arg(long, env = "CRADLE_DHCP_OFF")]
    pub dhcp_off: bool,

    /// A node answers a client another node owns once the client has been
    /// trying this long (its `secs`, or how long this node has seen it
    /// retransmit the same transaction); the next node in line waits twice
    /// as long, and so on. A dead owner then costs one retransmission
    /// (clients first retransmit after about 4 s). At most 60: PXE ROMs give
    /// up on DISCOVER after about a minute, so a longer wait never helps.
    #[arg(
        long,
        env = "CRADLE_DHCP_TAKEOVER_SECS",
        default_value_t = 3,
        value_parser = clap::value_parser!(u64).range(1..=60)
    )]
    pub dhcp_takeover_secs: u64,

    /// How long an address a client declined (DHCPDECLINE: someone else
    /// answers on it) stays out of the pools. At most a week, so that a
    /// conflict long cleared does not keep addresses out of use.
    #[arg(
        long,
        env = "CRADLE_DHCP_DECLINE_SECS",
        default_value_t = 600,
        value_parser = clap::value_parser!(u32).range(1..=604_800)
    )]
    pub dhcp_decline_secs: u32,

    /// Boot HTTP address (plain HTTP for firmware and iPXE). DHCP names
    /// this port in the `http://` boot files it hands out (UEFI HTTP boot,
    /// iPXE scripts), with the answering node's address.
    #[arg(
        long,
        env = "CRADLE_BOOT_HTTP_LISTEN",
        default_value = "0.0.0.0:8080",
        value_parser = parse_ipv4_listen
    )]
    pub boot_http_listen: SocketAddr,

    /// Log format: `text` or `json` (one object per line, for journald).
    #[arg(long, env = "CRADLE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Where this node reads the time: always the system clock from the
    /// command line; a test starting a node in-process may move it.
    #[arg(skip)]
    pub clock: crate::clock::Clock,
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

/// A listener for a DHCPv4 service: an IPv4 address and port (0 for any,
/// in tests).
fn parse_ipv4_listen(value: &str) -> Result<SocketAddr, String> {
    match value.parse::<SocketAddr>() {
        Ok(addr @ SocketAddr::V4(_)) => Ok(addr),
        Ok(SocketAddr::V6(_)) => Err("DHCPv4 listens on an IPv4 address".to_string()),
        Err(_) => Err("expected an IPv4 address and port, like 0.0.0.0:67".to_string()),
    }
}

/// Linux interface names are at most 15 bytes (IFNAMSIZ less the NUL).
pub const MAX_INTERFACE_NAME_BYTES: usize = 15;

/// A name Linux accepts for a network interface (`dev_valid_name`): 1 to
/// 15 bytes, not `.` or `..`, without `/`, `:` or white space.
fn parse_interface_name(value: &str) -> Result<String, String> {
    let max = MAX_INTERFACE_NAME_BYTES;
    if value.is_empty() || value.len() > max {
        return Err(format!("an interface name has 1 to {max} bytes"));
    }
    if value == "." || value == ".." {
        return Err("not an interface name".to_string());
    }
    if value.contains(['/', ':']) || value.contains(char::is_whitespace) {
        return Err("an interface name has no '/', ':' or white space".to_string());
    }
    Ok(value.to_string())
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

    /// The peer RPC address members are told to use, given the port the
    /// listener is bound to.
    pub fn advertised_rpc_addr(&self, bound_port: u16) -> String {
        let port = self.advertise_rpc_port.unwrap_or(bound_port);
        format!("{}:{port}", self.advertised_host())
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

    #[derive(Debug, clap::Parser)]
    struct Node {
        #[command(flatten)]
        settings: ServerSettings,
    }

    fn parse(args: &[&str]) -> Result<ServerSettings, clap::Error> {
        use clap::Parser as _;
        Node::try_parse_from(std::iter::once("cradle").chain(args.iter().copied()))
            .map(|node| node.settings)
    }

    #[test]
    fn dhcp_defaults() {
        let settings = parse(&[]).unwrap();
        assert_eq!(settings.dhcp_listen, "0.0.0.0:67".parse().unwrap());
        assert_eq!(settings.proxy_dhcp_listen, "0.0.0.0:4011".parse().unwrap());
        assert!(settings.dhcp_interface.is_empty());
        assert_eq!(settings.dhcp_client_port, 68);
        assert!(!settings.dhcp_off);
        assert_eq!(settings.dhcp_takeover_secs, 3);
        assert_eq!(settings.dhcp_decline_secs, 600);
    }

    #[test]
    fn dhcp_flags() {
        let settings = parse(&[
            "--dhcp-listen",
            "127.0.0.1:1067",
            "--proxy-dhcp-listen",
            "127.0.0.1:0",
            "--dhcp-interface",
            "eth0",
            "--dhcp-interface",
            "br-lab.10,lo",
            "--dhcp-client-port",
            "1068",
            "--dhcp-off",
            "--dhcp-takeover-secs",
            "60",
            "--dhcp-decline-secs",
            "604800",
        ])
        .unwrap();
        assert_eq!(settings.dhcp_listen, "127.0.0.1:1067".parse().unwrap());
        assert_eq!(settings.proxy_dhcp_listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(settings.dhcp_interface, ["eth0", "br-lab.10", "lo"]);
        assert_eq!(settings.dhcp_client_port, 1068);
        assert!(settings.dhcp_off);
        assert_eq!(settings.dhcp_takeover_secs, 60);
        assert_eq!(settings.dhcp_decline_secs, 604_800);
    }

    #[test]
    fn dhcp_garbage_is_refused_naming_the_flag() {
        let refused = |args: &[&str], why: &str| {
            let message = match parse(args) {
                Ok(settings) => panic!("{args:?} accepted: {settings:?}"),
                Err(e) => e.to_string(),
            };
            let flag = args[0].split('=').next().unwrap();
            assert!(message.contains(flag), "{args:?}: {message}");
            assert!(message.contains(why), "{args:?}: {message}");
        };
        for listen in ["--dhcp-listen", "--proxy-dhcp-listen"] {
            refused(&[listen, "[::]:67"], "IPv4");
            refused(&[listen, "0.0.0.0"], "address and port");
            refused(&[listen, "0.0.0.0:70000"], "address and port");
            refused(&[listen, "eth0:67"], "address and port");
            refused(&[listen, ""], "address and port");
        }
        refused(&["--dhcp-interface", ""], "1 to 15 bytes");
        refused(&["--dhcp-interface", "eth0,"], "1 to 15 bytes");
        refused(&["--dhcp-interface", "a-very-long-name0"], "1 to 15 bytes");
        refused(&["--dhcp-interface", ".."], "not an interface name");
        refused(&["--dhcp-interface", "eth0:1"], "no '/'");
        refused(&["--dhcp-interface", "../eth0"], "no '/'");
        refused(&["--dhcp-interface", "eth 0"], "no '/'");
        refused(&["--dhcp-client-port", "0"], "not in 1..=65535");
        refused(&["--dhcp-client-port", "65536"], "65536");
        refused(&["--dhcp-client-port=-1"], "-1");
        refused(&["--dhcp-takeover-secs", "0"], "not in 1..=60");
        refused(&["--dhcp-takeover-secs", "61"], "not in 1..=60");
        refused(&["--dhcp-takeover-secs", "3s"], "3s");
        refused(&["--dhcp-decline-secs", "0"], "not in 1..=604800");
        refused(&["--dhcp-decline-secs", "604801"], "not in 1..=604800");
        refused(&["--dhcp-decline-secs", "ten"], "ten");
        refused(&["--dhcp-off=yes"], "unexpected value");
    }

    #[test]
    fn every_dhcp_flag_has_its_variable() {
        use clap::CommandFactory as _;
        let command = Node::command();
        for (flag, variable) in [
            ("dhcp-listen", "CRADLE_DHCP_LISTEN"),
            ("dhcp-interface", "CRADLE_DHCP_INTERFACE"),
            ("proxy-dhcp-listen", "CRADLE_PROXY_DHCP_LISTEN"),
            ("dhcp-client-port", "CRADLE_DHCP_CLIENT_PORT"),
            ("dhcp-off", "CRADLE_DHCP_OFF"),
            ("dhcp-takeover-secs", "CRADLE_DHCP_TAKEOVER_SECS"),
            ("dhcp-decline-secs", "CRADLE_DHCP_DECLINE_SECS"),
        ] {
            let arg = command
                .get_arguments()
                .find(|arg| arg.get_long() == Some(flag))
                .unwrap_or_else(|| panic!("no --{flag}"));
            assert_eq!(arg.get_env(), Some(OsStr::new(variable)), "--{flag}");
        }
    }
}
