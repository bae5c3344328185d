//! The `cradle` command line: every subcommand except `cradle server` is a
//! client of a member's HTTPS API, in the manner of `drpcli`.
//!
//! # Layout
//! - `mod.rs` (here): the clap types (every verb, flag and `CRADLE_*`
//!   variable of the client) and [`run`], which carries out a parsed command.
//! - [`client`]: the HTTPS client: pinned TLS, the bearer token, paging,
//!   the event stream, API errors, and the one unverified connection
//!   `cradle login` makes to read the CA it is asked to pin.
//! - [`session`]: `<config-dir>/config.json` written by `cradle login`, how
//!   flags override it, and the decision whether a CA may be trusted.
//! - [`input`]: documents (JSON or YAML, file or stdin), list filters,
//!   `--set`, param values.
//! - [`output`]: JSON, YAML and table rendering.
//!
//! Architecture invariant: the CLI knows the server only through its HTTP
//! API (JSON values, stable error codes); it does not use the server's
//! model types, so either side's internals can change freely.
//!
//! Architecture invariant: no credential is ever sent over a connection
//! whose certificate did not verify against a CA the user pinned, either by
//! its fingerprint (`--ca-hash`) or by file (`--ca-file`).

pub use crate::client;
pub mod input;
pub mod output;
pub mod session;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::tls;
use client::{Body, Client, ClientError, Endpoint, Pager, SseParser};
use input::{Assignment, Filter, InputError, Source};
pub use output::OutputFormat;
use output::{RenderError, Shape};
use session::{Overrides, PinError, Session, SessionError};

/// The environment variable `cradle login` reads the password from when
/// `--password-stdin` is not given.
pub const ENV_PASSWORD: &str = "CRADLE_PASSWORD";

/// `--timeout` unless given: the connect timeout the client always had.
const DEFAULT_TIMEOUT_SECS: u64 = client::CONNECT_TIMEOUT.as_secs();
/// Largest `--timeout`: an hour; a member that takes longer is down.
const MAX_TIMEOUT_SECS: u64 = 3_600;

/// Consecutive failed reconnects after which `cradle events` gives up.
const MAX_EVENT_RECONNECTS: u32 = 10;
/// Longest pause between reconnects of `cradle events`.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// Kind names as the API spells them (the plural URL segment).
const KIND_NAMES: [&str; 11] = [
    "machines",
    "profiles",
    "params",
    "bootenvs",
    "templates",
    "subnets",
    "reservations",
    "leases",
    "users",
    "tokens",
    "prefs",
];

#[derive(Debug, Parser)]
#[command(
    name = "cradle",
    version,
    about = "Cradle: a highly available, clustered network-boot appliance",
    long_about = "Cradle: a highly available, clustered network-boot appliance.\n\n`cradle server` runs a node. Every other subcommand is a client of any member's API: log in once with `cradle login`, then list, show, create, update, patch and delete objects."
)]
pub struct Cli {
    #[command(flatten)]
    pub client: ClientOptions,
    #[command(subcommand)]
    pub command: Command,
}

/// How client subcommands reach the API. Each defaults to what `cradle
/// login` saved in the config directory.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Client options")]
pub struct ClientOptions {
    /// API endpoint of any cluster member, e.g. https://node1:8443 [default:
    /// the one `cradle login` saved]
    #[arg(long, global = true, env = "CRADLE_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,

    /// Bearer token [default: the one `cradle login` saved]
    // Not global: `cradle join --token` is the join token.
    #[arg(
        long,
        env = "CRADLE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// PEM file of the cluster CA to verify the server against [default: the
    /// CA `cradle login` pinned]. With `login`, the CA to expect.
    #[arg(long, global = true, env = "CRADLE_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Directory of the saved session (config.json) [default:
    /// ~/.config/cradle]
    #[arg(long, global = true, env = "CRADLE_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,

    /// Output format [default: table for list verbs, json for everything
    /// else]
    #[arg(short, long, global = true, env = "CRADLE_OUTPUT", value_enum)]
    pub output: Option<OutputFormat>,
    /// Seconds to wait for a member to accept the connection (TCP and TLS
    /// handshake); an API call may take 60 s, or this long if longer
    #[arg(
        long = "timeout",
        global = true,
        env = "CRADLE_TIMEOUT",
        value_name = "SECS",
        default_value_t = DEFAULT_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS)
    )]
    pub timeout_secs: u64,
}

impl ClientOptions {
    /// `--timeout` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a Cradle node (founding a new cluster on an empty data dir)
    Server(crate::config::ServerArgs),
    /// Found a new cluster on an empty data dir and run its first node
    Init(crate::config::ServerArgs),
    /// Join an existing cluster with a join token, then run as a member
    Join(JoinArgs),
    /// Cluster join tokens
    #[command(subcommand)]
    Token(JoinTokenCmd),
    /// Cluster members
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Pin a cluster's CA, log in, and save the session
    Login(LoginArgs),
    /// Forget the saved session
    Logout(LogoutArgs),
    /// Show this member's view of the cluster: role, leader, members, lag
    Status,
    /// Print changes as they happen, one JSON line each, until interrupted
    Events(EventsArgs),
    /// Machines: the hosts Cradle boots, by UUID or name
    #[command(subcommand)]
    Machines(MachinesCmd),
    /// Profiles: named sets of params that machines inherit
    #[command(subcommand)]
    Profiles(ProfilesCmd),
    /// Param definitions: schema, default, secure
    #[command(subcommand)]
    Params(ObjectCmd),
    /// Boot environments: kernel, initrds and templates per arch
    #[command(subcommand)]
    Bootenvs(ObjectCmd),
    /// Templates rendered per machine
    #[command(subcommand)]
    Templates(ObjectCmd),
    /// DHCP subnets
    #[command(subcommand)]
    Subnets(ObjectCmd),
    /// DHCP reservations: fixed addresses for MACs
    #[command(subcommand)]
    Reservations(ObjectCmd),
    /// DHCP leases
    #[command(subcommand)]
    Leases(ObjectCmd),
    /// Users who log in to the API
    #[command(subcommand)]
    Users(UsersCmd),
    /// API tokens
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Cluster-wide preferences
    #[command(subcommand)]
    Prefs(PrefsCmd),
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// API endpoint of any member, e.g. https://node1:8443
    #[arg(value_name = "ENDPOINT")]
    pub endpoint: String,
    /// User name
    #[arg(short, long)]
    pub user: String,
    /// Read the password from the first line of stdin [default: from
    /// CRADLE_PASSWORD]
    #[arg(long)]
    pub password_stdin: bool,
    /// The cluster CA's fingerprint, sha256:<hex>, as the first node printed
    /// it. Without it (or --ca-file) login shows the server's fingerprint and
    /// stops.
    #[arg(long, value_name = "sha256:HEX", value_parser = session::parse_ca_hash)]
    pub ca_hash: Option<String>,
    /// Lifetime of the session's token, e.g. 8h or 3600 [default: the
    /// server's]
    #[arg(long, value_name = "DURATION", value_parser = input::parse_duration_secs)]
    pub ttl: Option<u64>,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Also revoke the session's token on the server (needs admin rights)
    #[arg(long)]
    pub revoke: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Start after this revision (replaying what is still kept) [default:
    /// only new changes]
    #[arg(long, value_name = "REV")]
    pub since: Option<u64>,
    /// Only changes to this kind (repeatable)
    #[arg(long = "kind", value_name = "KIND", value_parser = KIND_NAMES)]
    pub kinds: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReadOpts {
    /// Answer from this member's copy without confirming with the leader:
    /// works without a quorum, may lag behind
    #[arg(long)]
    pub stale: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Filters, all of which must match: an indexed field or a dotted path,
    /// e.g. name=foo bootenv=flatcar params.rack=r1
    #[arg(value_name = "FIELD=VALUE", value_parser = input::parse_filter)]
    pub filters: Vec<Filter>,
    /// Sort by this field (a dotted path) [default: by key]
    #[arg(long, value_name = "FIELD")]
    pub sort: Option<String>,
    /// Sort in descending order
    #[arg(long)]
    pub desc: bool,
    /// Fetch at most this many, in one page [default: everything]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: Option<u64>,
    /// Skip this many first
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub offset: u64,
    #[command(flatten)]
    pub read: ReadOpts,
}

#[derive(Debug, Args)]
pub struct KeyArg {
    /// The object's key: machines by UUID or name, templates by id,
    /// reservations and leases by address, tokens by id, the rest by name
    #[arg(value_name = "KEY")]
    pub key: String,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub key: KeyArg,
    #[command(flatten)]
    pub read: ReadOpts,
}

#[derive(Debug, Args)]
pub struct IfMatch {
    /// Only if the object is still at this revision (its `revision` field)
    #[arg(long, value_name = "REV")]
    pub if_match: Option<u64>,
}

#[derive(Debug, Args)]
pub struct FileArg {
    /// JSON or YAML document; - for stdin
    #[arg(short, long, value_name = "FILE", value_parser = input::parse_source)]
    pub file: Source,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub key: KeyArg,
    /// The whole new object, JSON or YAML; - for stdin
    #[arg(short, long, value_name = "FILE", value_parser = input::parse_source)]
    pub file: Source,
    #[command(flatten)]
    pub guard: IfMatch,
}

#[derive(Debug, Args)]
pub struct PatchChanges {
    /// A JSON Patch (RFC 6902) list of operations, JSON or YAML; - for stdin
    #[arg(
        short,
        long,
        value_name = "FILE",
        value_parser = input::parse_source,
        required_unless_present_any = ["set", "unset"],
        conflicts_with_all = ["set", "unset"]
    )]
    pub file: Option<Source>,
    /// Set a field (repeatable): PATH=VALUE, PATH dotted (params.rack) or a
    /// JSON pointer (/params/kernel.console); VALUE is JSON if it parses,
    /// else a string
    #[arg(long, value_name = "PATH=VALUE", value_parser = input::parse_assignment)]
    pub set: Vec<Assignment>,
    /// Remove a field (repeatable); PATH as for --set
    #[arg(long, value_name = "PATH", value_parser = input::parse_unset)]
    pub unset: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PatchArgs {
    #[command(flatten)]
    pub key: KeyArg,
    #[command(flatten)]
    pub changes: PatchChanges,
    #[command(flatten)]
    pub guard: IfMatch,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub key: KeyArg,
    #[command(flatten)]
    pub guard: IfMatch,
}

/// Verbs that read.
#[derive(Debug, Subcommand)]
pub enum ReadCmd {
    /// List objects (every page, unless --limit)
    List(ListArgs),
    /// Show one object
    Show(ShowArgs),
}

/// Verbs that change an existing object.
#[derive(Debug, Subcommand)]
pub enum WriteCmd {
    /// Replace an object with a new document (PUT)
    Update(UpdateArgs),
    /// Change fields: a JSON Patch file, or --set/--unset
    Patch(PatchArgs),
    /// Delete an object
    Delete(DeleteArgs),
}

#[derive(Debug, Subcommand)]
pub enum ObjectCmd {
    #[command(flatten)]
    Read(ReadCmd),
    /// Create an object from a JSON or YAML document
    Create(FileArg),
    #[command(flatten)]
    Write(WriteCmd),
}

#[derive(Debug, Subcommand)]
pub enum MachinesCmd {
    #[command(flatten)]
    Read(ReadCmd),
    /// Create a machine from flags, a document, or both (flags win)
    Create(MachineCreateArgs),
    #[command(flatten)]
    Write(WriteCmd),
    /// Params set on a machine
    #[command(subcommand)]
    Params(ParamsCmd),
    /// Every param that applies to a machine, with where its value comes from
    EffectiveParams(ShowArgs),
}

#[derive(Debug, Subcommand)]
pub enum ProfilesCmd {
    #[command(flatten)]
    Read(ReadCmd),
    /// Create a profile from flags, a document, or both (flags win)
    Create(ProfileCreateArgs),
    #[command(flatten)]
    Write(WriteCmd),
    /// Params set on a profile
    #[command(subcommand)]
    Params(ParamsCmd),
}

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    #[command(flatten)]
    Read(ReadCmd),
    /// Create a user from flags, a document, or both (flags win)
    Create(UserCreateArgs),
    #[command(flatten)]
    Write(WriteCmd),
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The join token `cradle token create` printed: <id>.<secret>
    #[arg(long = "token", value_name = "ID.SECRET")]
    pub join_token: String,
    /// The cluster CA's fingerprint, as `cradle token create` printed it
    #[arg(long, value_name = "sha256:HEX", value_parser = session::parse_ca_hash)]
    pub ca_hash: String,
    /// API endpoint of any member, e.g. https://node1:8443
    #[arg(value_name = "ENDPOINT")]
    pub url: String,
    #[command(flatten)]
    pub settings: crate::config::ServerSettings,
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCmd {
    /// Issue a join token and print the `cradle join` command that uses it
    Create(JoinTokenCreateArgs),
    /// List join tokens (never their secrets)
    List,
    /// Revoke a join token
    Revoke {
        #[arg(value_name = "ID")]
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct JoinTokenCreateArgs {
    /// How long the token is valid, e.g. 30m, 1h, 2d
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = input::parse_duration_secs)]
    pub ttl: u64,
    /// How many nodes may join with it
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub uses: u32,
    #[arg(long, default_value = "")]
    pub description: String,
}

#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// List members: id, addresses, role, lag
    List,
    /// Remove a member (a Raft membership change; its certificate is refused from then on)
    Remove {
        #[arg(value_name = "ID")]
        id: u64,
        /// Allow removing the node you are talking to, or the last voter
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    #[command(flatten)]
    Read(ReadCmd),
    /// Issue a token (printed once; only its record is kept)
    Create(TokenCreateArgs),
    /// Revoke a token
    #[command(alias = "revoke")]
    Delete(DeleteArgs),
}

#[derive(Debug, Subcommand)]
pub enum PrefsCmd {
    /// Show the preferences
    Show(ReadOpts),
    /// Replace the preferences with a new document (PUT)
    Update(PrefsUpdateArgs),
    /// Change preferences: a JSON Patch file, or --set/--unset
    Patch(PrefsPatchArgs),
}

#[derive(Debug, Args)]
pub struct PrefsUpdateArgs {
    /// The whole new preferences, JSON or YAML; - for stdin
    #[arg(short, long, value_name = "FILE", value_parser = input::parse_source)]
    pub file: Source,
    #[command(flatten)]
    pub guard: IfMatch,
}

#[derive(Debug, Args)]
pub struct PrefsPatchArgs {
    #[command(flatten)]
    pub changes: PatchChanges,
    #[command(flatten)]
    pub guard: IfMatch,
}

#[derive(Debug, Subcommand)]
pub enum ParamsCmd {
    /// Show all params set on the object, or one
    Get {
        #[command(flatten)]
        key: KeyArg,
        /// One param's name
        name: Option<String>,
    },
    /// Set one param; VALUE is JSON if it parses (5, true, ["a"]), else a
    /// string
    Set {
        #[command(flatten)]
        key: KeyArg,
        /// The param's name
        name: String,
        /// Its value
        value: String,
        #[command(flatten)]
        guard: IfMatch,
    },
    /// Remove one param
    Delete {
        #[command(flatten)]
        key: KeyArg,
        /// The param's name
        name: String,
        #[command(flatten)]
        guard: IfMatch,
    },
}

#[derive(Debug, Args)]
pub struct MachineCreateArgs {
    /// Start from this JSON or YAML document; - for stdin
    #[arg(short, long, value_name = "FILE", value_parser = input::parse_source)]
    pub file: Option<Source>,
    /// The machine's name
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    /// MAC address (repeatable)
    #[arg(long = "mac", value_name = "MAC", value_parser = input::parse_mac)]
    pub macs: Vec<String>,
    /// Fixed IPv4 address
    #[arg(long)]
    pub address: Option<Ipv4Addr>,
    /// CPU architecture [default: amd64]
    #[arg(long, value_parser = ["amd64", "arm64", "x86_64", "aarch64"])]
    pub arch: Option<String>,
    /// Boot environment [default: the prefs' default_bootenv]
    #[arg(long)]
    pub bootenv: Option<String>,
    /// Profile (repeatable, in lookup order: earlier wins)
    #[arg(long = "profile", value_name = "PROFILE")]
    pub profiles: Vec<String>,
    /// Free text for people
    #[arg(long)]
    pub description: Option<String>,
    /// The machine's UUID [default: the server draws one]
    #[arg(long)]
    pub uuid: Option<uuid::Uuid>,
}

#[derive(Debug, Args)]
pub struct ProfileCreateArgs {
    /// Start from this JSON or YAML document; - for stdin
    #[arg(short, long, value_name = "FILE", value_parser = input::parse_source)]
    pub file: Option<Source>,
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    /// Free text for people
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Args)]
pub struct UserCreateArgs {
    /// Start from this JSON or YAML document; - for stdin
    #[arg(short, long, value_name = "FILE", value_parser = input::parse_source)]
    pub file: Option<Source>,
    /// The user's login name
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    /// Read the new user's password from the first line of stdin
    #[arg(long)]
    pub password_stdin: bool,
    /// Make the user an administrator
    #[arg(long)]
    pub admin: bool,
    /// Free text for people
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Whose token [default: yours]
    #[arg(long)]
    pub user: Option<String>,
    /// Lifetime, e.g. 1h or 3600 [default: the server's]
    #[arg(long, value_name = "DURATION", value_parser = input::parse_duration_secs)]
    pub ttl: Option<u64>,
    /// Narrow the token to this level [default: the user's own]
    #[arg(long, value_name = "LEVEL", value_parser = ["read", "write", "admin"])]
    pub scope: Option<String>,
    /// Narrow the token to one kind
    #[arg(long, value_name = "KIND", value_parser = KIND_NAMES, requires = "scope")]
    pub scope_kind: Option<String>,
    /// Narrow the token to one object (its key) of --scope-kind
    #[arg(long, value_name = "KEY", requires = "scope_kind")]
    pub scope_object: Option<String>,
    /// Free text for people
    #[arg(long)]
    pub description: Option<String>,
}

/// The object kinds, as the CLI addresses them: the model's own.
pub use crate::model::ObjectKind as Kind;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("writing output: {0}")]
    Output(std::io::Error),
    #[error("--ca-file: {0}")]
    CaFile(String),
    #[error("not_found: no machine is named {0:?}")]
    NoSuchMachine(String),
    #[error("{count} machines are named {name:?}; use a UUID: {uuids}")]
    AmbiguousMachine {
        name: String,
        count: usize,
        uuids: String,
    },
    #[error("not_found: no lease has the MAC or client id {0:?}")]
    NoSuchLease(String),
    #[error("{count} leases match {key:?} (one per subnet); use an address: {addresses}")]
    AmbiguousLease {
        key: String,
        count: usize,
        addresses: String,
    },
    #[error("{0}")]
    Unexpected(String),
}

/// Carries out a client subcommand. `cradle server` is main's business.
pub async fn run(command: Command, client: ClientOptions) -> anyhow::Result<()> {
    tls::install_crypto_provider();
    match execute(command, &client).await {
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.map_err(anyhow::Error::from),
    }
}

/// Prints results in the chosen format, or the shape's default.
#[derive(Debug, Clone, Copy)]
struct Printer {
    format: Option<OutputFormat>,
}

impl Printer {
    fn print(&self, value: &Value, shape: Shape) -> Result<(), CliError> {
        let format = self.format.unwrap_or(shape.default_format());
        let text = output::render(value, shape, format)?;
        output::emit(&text).map_err(CliError::Output)
    }
}

fn say(text: &str) -> Result<(), CliError> {
    output::emit(&format!("{text}\n")).map_err(CliError::Output)
}

async fn execute(command: Command, options: &ClientOptions) -> Result<(), CliError> {
    let out = Printer {
        format: options.output,
    };
    match command {
        Command::Server(_) | Command::Init(_) | Command::Join(_) => Err(CliError::Unexpected(
            "`cradle server`, `init` and `join` run a node; they are not client subcommands".into(),
        )),
        Command::Token(cmd) => {
            let api = connect(options)?;
            match cmd {
                JoinTokenCmd::Create(args) => {
                    let body = serde_json::json!({
                        "ttl_secs": args.ttl, "uses": args.uses, "description": args.description,
                    });
                    let reply = api
                        .call(
                            Method::POST,
                            &["cluster", "tokens"],
                            &[],
                            Body::Json(body),
                            None,
                        )
                        .await?;
                    match options.output {
                        Some(_) => out.print(&reply.body, Shape::Map),
                        None => say(reply.body["join_command"].as_str().unwrap_or_default()),
                    }
                }
                JoinTokenCmd::List => {
                    let reply = api.get(&["cluster", "tokens"], &[]).await?;
                    out.print(&reply.body, Shape::Map)
                }
                JoinTokenCmd::Revoke { id } => {
                    let reply = api
                        .call(
                            Method::DELETE,
                            &["cluster", "tokens", &id],
                            &[],
                            Body::Empty,
                            None,
                        )
                        .await?;
                    out.print(&reply.body, Shape::Map)
                }
            }
        }
        Command::Nodes(cmd) => {
            let api = connect(options)?;
            match cmd {
                NodesCmd::List => {
                    let reply = api.get(&["cluster", "nodes"], &[]).await?;
                    out.print(&reply.body, Shape::Map)
                }
                NodesCmd::Remove { id, force } => {
                    let query = if force {
                        vec![("force".to_string(), "true".to_string())]
                    } else {
                        Vec::new()
                    };
                    let reply = api
                        .call(
                            Method::DELETE,
                            &["cluster", "nodes", &id.to_string()],
                            &query,
                            Body::Empty,
                            None,
                        )
                        .await?;
                    out.print(&reply.body, Shape::Map)
                }
            }
        }
        Command::Login(args) => login(args, options).await,
        Command::Logout(args) => logout(args, options).await,
        Command::Status => {
            let reply = connect(options)?.get(&["status"], &[]).await?;
            out.print(&reply.body, Shape::Status)
        }
        Command::Events(args) => events(&connect(options)?, args).await,
        Command::Machines(cmd) => {
            let api = connect(options)?;
            match cmd {
                MachinesCmd::Read(cmd) => read(&api, out, Kind::Machines, cmd).await,
                MachinesCmd::Create(args) => {
                    let base = args.file.as_ref().map(input::read_object).transpose()?;
                    let body = machine_body(base.unwrap_or_default(), &args);
                    create(&api, out, Kind::Machines, body).await
                }
                MachinesCmd::Write(cmd) => write(&api, out, Kind::Machines, cmd).await,
                MachinesCmd::Params(cmd) => params(&api, out, Kind::Machines, cmd).await,
                MachinesCmd::EffectiveParams(args) => {
                    let uuid =
                        object_key(&api, Kind::Machines, &args.key.key, !args.read.stale).await?;
                    let reply = api
                        .get(
                            &["machines", &uuid, "effective-params"],
                            &consistency(&args.read),
                        )
                        .await?;
                    out.print(&reply.body, Shape::Effective)
                }
            }
        }
        Command::Profiles(cmd) => {
            let api = connect(options)?;
            match cmd {
                ProfilesCmd::Read(cmd) => read(&api, out, Kind::Profiles, cmd).await,
                ProfilesCmd::Create(args) => {
                    let mut body = args
                        .file
                        .as_ref()
                        .map(input::read_object)
                        .transpose()?
                        .unwrap_or_default();
                    set_some(&mut body, "name", args.name.map(Value::from));
                    set_some(&mut body, "description", args.description.map(Value::from));
                    create(&api, out, Kind::Profiles, Value::Object(body)).await
                }
                ProfilesCmd::Write(cmd) => write(&api, out, Kind::Profiles, cmd).await,
                ProfilesCmd::Params(cmd) => params(&api, out, Kind::Profiles, cmd).await,
            }
        }
        Command::Params(cmd) => objects(&connect(options)?, out, Kind::Params, cmd).await,
        Command::Bootenvs(cmd) => objects(&connect(options)?, out, Kind::Bootenvs, cmd).await,
        Command::Templates(cmd) => objects(&connect(options)?, out, Kind::Templates, cmd).await,
        Command::Subnets(cmd) => objects(&connect(options)?, out, Kind::Subnets, cmd).await,
        Command::Reservations(cmd) => {
            objects(&connect(options)?, out, Kind::Reservations, cmd).await
        }
        Command::Leases(cmd) => objects(&connect(options)?, out, Kind::Leases, cmd).await,
        Command::Users(cmd) => {
            let api = connect(options)?;
            match cmd {
                UsersCmd::Read(cmd) => read(&api, out, Kind::Users, cmd).await,
                UsersCmd::Create(args) => {
                    if args.password_stdin && args.file == Some(Source::Stdin) {
                        return Err(InputError::StdinTwice(
                            "give the document with -f FILE, or the password with --password-stdin",
                        )
                        .into());
                    }
                    let base = args.file.as_ref().map(input::read_object).transpose()?;
                    let password = if args.password_stdin {
                        Some(input::read_password(true, ENV_PASSWORD)?)
                    } else {
                        None
                    };
                    let body = user_body(base.unwrap_or_default(), &args, password);
                    create(&api, out, Kind::Users, body).await
                }
                UsersCmd::Write(cmd) => write(&api, out, Kind::Users, cmd).await,
            }
        }
        Command::Tokens(cmd) => {
            let api = connect(options)?;
            match cmd {
                TokensCmd::Read(cmd) => read(&api, out, Kind::Tokens, cmd).await,
                TokensCmd::Create(args) => {
                    let reply = api
                        .call(
                            Method::POST,
                            &["tokens"],
                            &[],
                            Body::Json(token_body(&args)),
                            None,
                        )
                        .await?;
                    out.print(&reply.body, Shape::Map)
                }
                TokensCmd::Delete(args) => {
                    write(&api, out, Kind::Tokens, WriteCmd::Delete(args)).await
                }
            }
        }
        Command::Prefs(cmd) => {
            let api = connect(options)?;
            let path = ["prefs", "prefs"];
            let reply = match cmd {
                PrefsCmd::Show(read) => api.get(&path, &consistency(&read)).await?,
                PrefsCmd::Update(args) => {
                    let body = Value::Object(input::read_object(&args.file)?);
                    api.call(
                        Method::PUT,
                        &path,
                        &[],
                        Body::Json(body),
                        args.guard.if_match,
                    )
                    .await?
                }
                PrefsCmd::Patch(args) => {
                    let ops = patch_ops(&args.changes)?;
                    api.call(
                        Method::PATCH,
                        &path,
                        &[],
                        Body::JsonPatch(ops),
                        args.guard.if_match,
                    )
                    .await?
                }
            };
            out.print(&reply.body, Shape::Object(Kind::Prefs))
        }
    }
}

/// The client for every verb but `login`: endpoint, CA and token from the
/// flags and environment, the rest from the saved session.
fn connect(options: &ClientOptions) -> Result<Client, CliError> {
    let overrides = Overrides {
        endpoint: options.endpoint.clone(),
        token: options.token.clone(),
        ca_pem: read_ca_file(options)?,
    };
    let saved = if overrides.complete() {
        None
    } else {
        Session::load(&config_dir(options)?)?
    };
    let target = session::resolve(overrides, saved)?;
    let endpoint = Endpoint::parse(&target.endpoint)?;
    Ok(Client::new(
        endpoint,
        &target.ca_pem,
        Some(target.token),
        options.connect_timeout(),
    )?)
}

fn config_dir(options: &ClientOptions) -> Result<PathBuf, SessionError> {
    match &options.config_dir {
        Some(dir) => Ok(dir.clone()),
        None => session::default_config_dir(),
    }
}

fn read_ca_file(options: &ClientOptions) -> Result<Option<String>, CliError> {
    let Some(path) = &options.ca_file else {
        return Ok(None);
    };
    let pem = Source::File(path.clone()).read()?;
    // Refuse a file that holds no certificate here, with its name.
    tls::parse_certs(&pem, path).map_err(|e| CliError::CaFile(e.to_string()))?;
    Ok(Some(pem))
}

/// `consistent=true` unless `--stale`.
fn consistency(read: &ReadOpts) -> Vec<(String, String)> {
    if read.stale {
        Vec::new()
    } else {
        vec![("consistent".into(), "true".into())]
    }
}

async fn objects(api: &Client, out: Printer, kind: Kind, cmd: ObjectCmd) -> Result<(), CliError> {
    match cmd {
        ObjectCmd::Read(cmd) => read(api, out, kind, cmd).await,
        ObjectCmd::Create(args) => {
            let body = Value::Object(input::read_object(&args.file)?);
            create(api, out, kind, body).await
        }
        ObjectCmd::Write(cmd) => write(api, out, kind, cmd).await,
    }
}

async fn read(api: &Client, out: Printer, kind: Kind, cmd: ReadCmd) -> Result<(), CliError> {
    match cmd {
        ReadCmd::List(args) => {
            let filters: Vec<(String, String)> = args
                .filters
                .iter()
                .map(|f| (f.field.clone(), f.value.clone()))
                .collect();
            let pager = Pager::new(
                &filters,
                args.sort.as_deref(),
                args.desc,
                args.limit,
                args.offset,
                !args.read.stale,
            );
            let items = api.list(kind.as_str(), pager).await?;
            out.print(&Value::Array(items), Shape::List(kind))
        }
        ReadCmd::Show(args) => {
            let key = object_key(api, kind, &args.key.key, !args.read.stale).await?;
            let reply = api
                .get(&[kind.as_str(), &key], &consistency(&args.read))
                .await?;
            out.print(&reply.body, Shape::Object(kind))
        }
    }
}

async fn create(api: &Client, out: Printer, kind: Kind, body: Value) -> Result<(), CliError> {
    let reply = api
        .call(Method::POST, &[kind.as_str()], &[], Body::Json(body), None)
        .await?;
    out.print(&reply.body, Shape::Object(kind))
}

async fn write(api: &Client, out: Printer, kind: Kind, cmd: WriteCmd) -> Result<(), CliError> {
    let (key, method, body, if_match) = match cmd {
        WriteCmd::Update(args) => {
            let body = Value::Object(input::read_object(&args.file)?);
            (args.key, Method::PUT, Body::Json(body), args.guard.if_match)
        }
        WriteCmd::Patch(args) => {
            let ops = patch_ops(&args.changes)?;
            (
                args.key,
                Method::PATCH,
                Body::JsonPatch(ops),
                args.guard.if_match,
            )
        }
        WriteCmd::Delete(args) => (args.key, Method::DELETE, Body::Empty, args.guard.if_match),
    };
    let key = object_key(api, kind, &key.key, true).await?;
    let reply = api
        .call(method, &[kind.as_str(), &key], &[], body, if_match)
        .await?;
    out.print(&reply.body, Shape::Object(kind))
}

async fn params(api: &Client, out: Printer, kind: Kind, cmd: ParamsCmd) -> Result<(), CliError> {
    let reply = match cmd {
        ParamsCmd::Get { key, name } => {
            let key = object_key(api, kind, &key.key, true).await?;
            match name {
                Some(name) => {
                    api.get(&[kind.as_str(), &key, "params", &name], &[])
                        .await?
                }
                None => {
                    let query = [("consistent".to_string(), "true".to_string())];
                    api.get(&[kind.as_str(), &key, "params"], &query).await?
                }
            }
        }
        ParamsCmd::Set {
            key,
            name,
            value,
            guard,
        } => {
            let key = object_key(api, kind, &key.key, true).await?;
            let body = Body::Json(input::parse_value(&value));
            api.call(
                Method::PUT,
                &[kind.as_str(), &key, "params", &name],
                &[],
                body,
                guard.if_match,
            )
            .await?
        }
        ParamsCmd::Delete { key, name, guard } => {
            let key = object_key(api, kind, &key.key, true).await?;
            api.call(
                Method::DELETE,
                &[kind.as_str(), &key, "params", &name],
                &[],
                Body::Empty,
                guard.if_match,
            )
            .await?
        }
    };
    out.print(&reply.body, Shape::Map)
}

/// The key to put in the URL: machines may be named instead of given by
/// UUID, and a name is looked up.
async fn object_key(
    api: &Client,
    kind: Kind,
    key: &str,
    consistent: bool,
) -> Result<String, CliError> {
    if kind == Kind::Leases {
        return lease_key(api, key, consistent).await;
    }
    if kind != Kind::Machines {
        return Ok(key.to_string());
    }
    if let Ok(uuid) = uuid::Uuid::try_parse(key) {
        return Ok(uuid.hyphenated().to_string());
    }
    let mut query = vec![
        ("name".to_string(), key.to_string()),
        ("limit".to_string(), "10".to_string()),
    ];
    if consistent {
        query.push(("consistent".into(), "true".into()));
    }
    let reply = api.get(&["machines"], &query).await?;
    pick_machine(key, &reply.body)
}

/// Leases are keyed by address; a MAC or a client id (hex, `:`/`-`
/// separators allowed) is looked up through the lease index.
async fn lease_key(api: &Client, key: &str, consistent: bool) -> Result<String, CliError> {
    if key.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(key.to_string());
    }
    let (field, value) = match crate::model::validate::normalize_mac("key", key) {
        Ok(mac) => ("mac", mac),
        Err(_) => match crate::model::normalize_client_id(key) {
            Ok(client_id) => ("client_id", client_id),
            // Neither: let the server answer for the key as given.
            Err(_) => return Ok(key.to_string()),
        },
    };
    let mut query = vec![
        (field.to_string(), value),
        ("limit".to_string(), "10".to_string()),
    ];
    if consistent {
        query.push(("consistent".into(), "true".into()));
    }
    let reply = api.get(&["leases"], &query).await?;
    pick_lease(key, &reply.body)
}

/// The one lease a MAC or client id lookup found.
fn pick_lease(key: &str, found: &Value) -> Result<String, CliError> {
    let addresses: Vec<&str> = found
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|l| l.get("address").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    match addresses.as_slice() {
        [] => Err(CliError::NoSuchLease(key.to_string())),
        [address] => Ok(address.to_string()),
        many => Err(CliError::AmbiguousLease {
            key: key.to_string(),
            count: many.len(),
            addresses: many.join(", "),
        }),
    }
}

/// The one machine a name lookup found.
fn pick_machine(name: &str, found: &Value) -> Result<String, CliError> {
    let uuids: Vec<&str> = found
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|m| m.get("name").and_then(Value::as_str) == Some(name))
                .filter_map(|m| m.get("uuid").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    match uuids.as_slice() {
        [] => Err(CliError::NoSuchMachine(name.to_string())),
        [uuid] => Ok(uuid.to_string()),
        many => Err(CliError::AmbiguousMachine {
            name: name.to_string(),
            count: many.len(),
            uuids: many.join(", "),
        }),
    }
}

fn set_some(map: &mut Map<String, Value>, field: &str, value: Option<Value>) {
    if let Some(value) = value {
        map.insert(field.to_string(), value);
    }
}

/// A machine document: `base` (from `-f`) with the flags given laid over it.
fn machine_body(mut base: Map<String, Value>, args: &MachineCreateArgs) -> Value {
    set_some(&mut base, "name", args.name.clone().map(Value::from));
    if !args.macs.is_empty() {
        base.insert("hardware_addrs".into(), json!(args.macs));
    }
    set_some(
        &mut base,
        "address",
        args.address.map(|a| json!(a.to_string())),
    );
    set_some(&mut base, "arch", args.arch.clone().map(Value::from));
    set_some(&mut base, "bootenv", args.bootenv.clone().map(Value::from));
    if !args.profiles.is_empty() {
        base.insert("profiles".into(), json!(args.profiles));
    }
    set_some(
        &mut base,
        "description",
        args.description.clone().map(Value::from),
    );
    set_some(
        &mut base,
        "uuid",
        args.uuid.map(|u| json!(u.hyphenated().to_string())),
    );
    Value::Object(base)
}

/// A user document: `base` with the flags laid over it.
fn user_body(
    mut base: Map<String, Value>,
    args: &UserCreateArgs,
    password: Option<String>,
) -> Value {
    set_some(&mut base, "name", args.name.clone().map(Value::from));
    set_some(&mut base, "password", password.map(Value::from));
    if args.admin {
        base.insert("admin".into(), json!(true));
    }
    set_some(
        &mut base,
        "description",
        args.description.clone().map(Value::from),
    );
    Value::Object(base)
}

/// The body of `POST /api/v1/tokens`.
fn token_body(args: &TokenCreateArgs) -> Value {
    let mut body = Map::new();
    set_some(&mut body, "user", args.user.clone().map(Value::from));
    set_some(&mut body, "ttl_secs", args.ttl.map(Value::from));
    if let Some(level) = &args.scope {
        body.insert(
            "scope".into(),
            json!({"level": level, "kind": args.scope_kind, "object": args.scope_object}),
        );
    }
    set_some(
        &mut body,
        "description",
        args.description.clone().map(Value::from),
    );
    Value::Object(body)
}

/// The JSON Patch a `patch` verb sends: the file's, or `--set`/`--unset`.
fn patch_ops(changes: &PatchChanges) -> Result<Value, CliError> {
    let ops = match &changes.file {
        Some(source) => input::read_patch(source)?,
        None => input::set_ops(&changes.set, &changes.unset),
    };
    Ok(Value::Array(ops))
}

async fn login(args: LoginArgs, options: &ClientOptions) -> Result<(), CliError> {
    let endpoint = Endpoint::parse(&args.endpoint)?;
    let expected_ca = read_ca_file(options)?;
    let file_fingerprint = match &expected_ca {
        Some(pem) => Some(tls::fingerprint_pem(pem).map_err(|e| CliError::CaFile(e.to_string()))?),
        None => None,
    };

    // Read what the server offers, then trust it only if the user vouched.
    let offered = client::fetch_ca_unverified(&endpoint, options.connect_timeout()).await?;
    let fingerprint = tls::fingerprint_pem(&offered.ca_pem)
        .map_err(|e| ClientError::Ca(format!("{endpoint}/api/v1/ca: {e}")))?;
    session::check_pin(
        &fingerprint,
        args.ca_hash.as_deref(),
        file_fingerprint.as_deref(),
    )?;
    client::check_presented_chain(&endpoint, &offered.presented, &offered.ca_pem)?;

    // From here on every connection verifies against the pinned CA.
    let password = input::read_password(args.password_stdin, ENV_PASSWORD)?;
    let api = Client::new(
        endpoint.clone(),
        &offered.ca_pem,
        None,
        options.connect_timeout(),
    )?;
    let mut request = Map::new();
    request.insert("description".into(), json!("cradle login"));
    set_some(&mut request, "ttl_secs", args.ttl.map(Value::from));
    let grant = api
        .issue_token(&args.user, &password, &Value::Object(request))
        .await?;
    let token = grant
        .get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            CliError::Unexpected(format!("{endpoint} answered the login without a token"))
        })?;
    let info = grant.get("info");
    let session = Session {
        endpoint: endpoint.to_string(),
        user: args.user.clone(),
        token: token.to_string(),
        token_id: info
            .and_then(|i| i.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string),
        token_expires_at_unix: info
            .and_then(|i| i.get("expires_at_unix"))
            .and_then(Value::as_u64),
        ca_fingerprint: fingerprint.clone(),
        ca_pem: offered.ca_pem,
    };
    let path = session.save(&config_dir(options)?)?;
    let expiry = session
        .token_expires_at_unix
        .map(|t| format!("; the token expires {}", output::format_unix(t)))
        .unwrap_or_default();
    say(&format!(
        "Logged in to {endpoint} as {}{expiry}.\nPinned CA {fingerprint}; session saved in {}.",
        args.user,
        path.display()
    ))
}

async fn logout(args: LogoutArgs, options: &ClientOptions) -> Result<(), CliError> {
    let dir = config_dir(options)?;
    if args.revoke {
        let id = Session::load(&dir)?
            .and_then(|s| s.token_id)
            .ok_or_else(|| {
                CliError::Unexpected("no saved session records a token id to revoke".into())
            })?;
        connect(options)?
            .call(Method::DELETE, &["tokens", &id], &[], Body::Empty, None)
            .await?;
    }
    if Session::remove(&dir)? {
        say(&format!(
            "Logged out; removed {}.",
            dir.join(session::CONFIG_FILE).display()
        ))
    } else {
        say("Not logged in.")
    }
}

/// Prints events until interrupted, reconnecting (from the last revision
/// seen) when the stream breaks. API errors end it at once.
async fn events(api: &Client, args: EventsArgs) -> Result<(), CliError> {
    let mut since = args.since;
    let mut failures: u32 = 0;
    loop {
        let mut query: Vec<(String, String)> = Vec::new();
        if let Some(since) = since {
            query.push(("since".into(), since.to_string()));
        }
        query.extend(args.kinds.iter().map(|k| ("kind".to_string(), k.clone())));
        let broke = match api.open_events(&query).await {
            Err(e @ (ClientError::Api { .. } | ClientError::Http { .. })) => return Err(e.into()),
            Err(e) => e.to_string(),
            Ok(mut response) => {
                let mut parser = SseParser::default();
                loop {
                    match response.chunk().await {
                        Ok(Some(bytes)) => {
                            for event in parser.feed(&bytes)? {
                                if event.event == "error" {
                                    return Err(ClientError::Stream(event.data).into());
                                }
                                let value: Value =
                                    serde_json::from_str(&event.data).map_err(|e| {
                                        ClientError::Stream(format!("an event is not JSON: {e}"))
                                    })?;
                                let revision = event
                                    .id
                                    .as_deref()
                                    .and_then(|id| id.parse().ok())
                                    .or_else(|| value.get("revision").and_then(Value::as_u64));
                                if revision.is_some() {
                                    since = revision;
                                }
                                failures = 0;
                                say(&value.to_string())?;
                            }
                        }
                        Ok(None) => break "the server closed the stream".to_string(),
                        Err(e) => break format!("the stream broke: {}", client::error_chain(&e)),
                    }
                }
            }
        };
        failures += 1;
        if failures > MAX_EVENT_RECONNECTS {
            return Err(ClientError::Stream(format!(
                "{broke}; gave up after {MAX_EVENT_RECONNECTS} reconnects"
            ))
            .into());
        }
        let delay = Duration::from_secs(1 << failures.min(5)).min(MAX_RECONNECT_DELAY);
        let resume = match since {
            Some(since) => format!("from revision {since}"),
            None => {
                "(changes made meanwhile may be missed: no event seen yet; use --since)".to_string()
            }
        };
        eprintln!(
            "warning: {broke}; reconnecting in {}s {resume}",
            delay.as_secs()
        );
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cradle").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_tree_is_well_formed() {
        Cli::command().debug_assert();
        let kinds = [
            Kind::Machines,
            Kind::Profiles,
            Kind::Params,
            Kind::Bootenvs,
            Kind::Templates,
            Kind::Subnets,
            Kind::Reservations,
            Kind::Leases,
            Kind::Users,
            Kind::Tokens,
            Kind::Prefs,
        ];
        assert_eq!(kinds.map(Kind::as_str), KIND_NAMES);
    }

    #[test]
    fn command_lines() {
        // Compares against the parsed command's Debug form, spaces removed.
        let check = |args: &[&str], expected: &str| match parse(args) {
            Ok(cli) => {
                let debug: String = format!("{:?}", cli.command).split_whitespace().collect();
                assert!(debug.contains(expected), "{args:?}: {debug}");
            }
            Err(e) => panic!("{args:?}: {e}"),
        };
        check(
            &[
                "machines",
                "list",
                "name=foo",
                "params.rack=r1",
                "--limit",
                "5",
            ],
            "field:\"params.rack\",value:\"r1\"",
        );
        check(
            &["machines", "list", "--sort", "name", "--desc"],
            "desc:true",
        );
        check(&["-o", "yaml", "machines", "show", "m1"], "key:\"m1\"");
        check(
            &["machines", "show", "m1", "-o", "json", "--stale"],
            "stale:true",
        );
        check(
            &[
                "machines",
                "patch",
                "m1",
                "--set",
                "bootenv=flatcar",
                "--unset",
                "params.a",
            ],
            "pointer:\"/bootenv\"",
        );
        check(&["profiles", "patch", "p1", "-f", "-"], "file:Some(Stdin)");
        check(
            &[
                "machines",
                "create",
                "--name",
                "m1",
                "--mac",
                "AA:BB:CC:DD:EE:FF",
                "--profile",
                "a",
                "--profile",
                "b",
            ],
            "macs:[\"aa:bb:cc:dd:ee:ff\"]",
        );
        check(
            &["machines", "params", "set", "m1", "rack", "r1"],
            "value:\"r1\"",
        );
        check(&["machines", "effective-params", "m1"], "EffectiveParams");
        check(&["templates", "create", "-f", "t.yaml"], "File(\"t.yaml\")");
        check(&["tokens", "revoke", "abc"], "Delete");
        check(
            &[
                "tokens",
                "create",
                "--scope",
                "write",
                "--scope-kind",
                "machines",
                "--ttl",
                "1h",
            ],
            "ttl:Some(3600)",
        );
        check(
            &["prefs", "patch", "--set", "default_bootenv=local"],
            "default_bootenv",
        );
        check(
            &[
                "users",
                "create",
                "--name",
                "ops",
                "--password-stdin",
                "--admin",
            ],
            "admin:true",
        );
        check(
            &[
                "login",
                "https://node1:8443",
                "--user",
                "admin",
                "--ca-hash",
                &format!("sha256:{}", "AB".repeat(32)),
            ],
            &format!("sha256:{}", "ab".repeat(32)),
        );
        check(
            &["events", "--since", "42", "--kind", "machines"],
            "since:Some(42)",
        );
        check(&["server", "--node-id", "2"], "node_id:2");

        let cli = parse(&["--endpoint", "https://x:8443", "status", "-o", "table"]).unwrap();
        assert_eq!(cli.client.endpoint.as_deref(), Some("https://x:8443"));
        assert_eq!(cli.client.output, Some(OutputFormat::Table));
    }

    #[test]
    fn flag_mistakes_are_clap_errors() {
        let check = |args: &[&str], expected: &str| {
            let error = parse(args).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains(expected), "{args:?}: {error}");
        };
        check(&["machines", "list", "limit=5"], "use the --limit flag");
        check(&["machines", "list", "name"], "is not FIELD=VALUE");
        check(&["machines", "list", "--limit", "0"], "--limit");
        check(&["machines", "patch", "m1"], "required");
        check(
            &["machines", "patch", "m1", "-f", "p.json", "--set", "a=1"],
            "cannot be used with",
        );
        check(
            &["machines", "patch", "m1", "--set", "a"],
            "is not PATH=VALUE",
        );
        check(&["machines", "create"], "--name");
        check(
            &["machines", "create", "--name", "m", "--mac", "nope"],
            "is not a MAC address",
        );
        check(
            &[
                "machines",
                "create",
                "--name",
                "m",
                "--address",
                "10.0.0.300",
            ],
            "--address",
        );
        check(
            &["machines", "create", "--name", "m", "--arch", "sparc"],
            "--arch",
        );
        check(&["templates", "create"], "--file");
        check(&["templates", "update", "t1"], "--file");
        check(
            &["login", "https://x", "--user", "a", "--ca-hash", "md5:abc"],
            "is not a CA fingerprint",
        );
        check(&["login", "https://x"], "--user");
        check(&["tokens", "create", "--scope-kind", "machines"], "--scope");
        check(&["tokens", "create", "--scope", "root"], "--scope");
        check(&["tokens", "update"], "unrecognized subcommand");
        check(&["-o", "xml", "status"], "xml");
        check(&["events", "--kind", "machine"], "machine");
    }

    fn machine_args(args: &[&str]) -> MachineCreateArgs {
        match parse(&[&["machines", "create"], args].concat())
            .unwrap()
            .command
        {
            Command::Machines(MachinesCmd::Create(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn machine_flags_lay_over_the_document() {
        let check = |base: Value, args: &[&str], expected: Value| {
            let base = base.as_object().cloned().unwrap_or_default();
            assert_eq!(
                machine_body(base, &machine_args(args)),
                expected,
                "{args:?}"
            );
        };
        check(
            json!({}),
            &[
                "--name",
                "m1",
                "--mac",
                "aa-bb-cc-dd-ee-01",
                "--mac",
                "aabb.ccdd.ee02",
                "--address",
                "10.0.0.5",
                "--arch",
                "arm64",
                "--bootenv",
                "flatcar",
                "--profile",
                "base",
                "--profile",
                "rack-a",
            ],
            json!({"name": "m1", "hardware_addrs": ["aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02"], "address": "10.0.0.5", "arch": "arm64", "bootenv": "flatcar", "profiles": ["base", "rack-a"]}),
        );
        check(
            json!({"name": "from-file", "bootenv": "local", "params": {"rack": "r1"}, "hardware_addrs": ["aa:bb:cc:dd:ee:09"]}),
            &[
                "-f",
                "m.yaml",
                "--bootenv",
                "flatcar",
                "--uuid",
                "0B6F3C52-6A5C-4A57-9D55-2B2F0F8A0C11",
            ],
            json!({"name": "from-file", "bootenv": "flatcar", "params": {"rack": "r1"}, "hardware_addrs": ["aa:bb:cc:dd:ee:09"], "uuid": "0b6f3c52-6a5c-4a57-9d55-2b2f0f8a0c11"}),
        );
    }

    #[test]
    fn users_and_tokens() {
        let Command::Users(UsersCmd::Create(args)) = parse(&[
            "users",
            "create",
            "--name",
            "ops",
            "--admin",
            "--description",
            "on call",
        ])
        .unwrap()
        .command
        else {
            panic!("not users create")
        };
        assert_eq!(
            user_body(Map::new(), &args, Some("hunter22".into())),
            json!({"name": "ops", "password": "hunter22", "admin": true, "description": "on call"})
        );
        let keeps_file_admin = json!({"name": "x", "admin": true})
            .as_object()
            .cloned()
            .unwrap();
        let Command::Users(UsersCmd::Create(args)) =
            parse(&["users", "create", "-f", "u.json"]).unwrap().command
        else {
            panic!("not users create")
        };
        assert_eq!(
            user_body(keeps_file_admin, &args, None),
            json!({"name": "x", "admin": true})
        );

        let Command::Tokens(TokensCmd::Create(args)) = parse(&[
            "tokens",
            "create",
            "--user",
            "m",
            "--ttl",
            "15m",
            "--scope",
            "write",
            "--scope-kind",
            "machines",
            "--scope-object",
            "u1",
            "--description",
            "boot",
        ])
        .unwrap()
        .command
        else {
            panic!("not tokens create")
        };
        assert_eq!(
            token_body(&args),
            json!({"user": "m", "ttl_secs": 900, "scope": {"level": "write", "kind": "machines", "object": "u1"}, "description": "boot"})
        );
        let Command::Tokens(TokensCmd::Create(args)) =
            parse(&["tokens", "create"]).unwrap().command
        else {
            panic!("not tokens create")
        };
        assert_eq!(token_body(&args), json!({}));
    }

    #[test]
    fn machine_names_resolve_to_exactly_one_uuid() {
        let check = |found: Value, expected: Result<&str, &str>| match (
            pick_machine("web1", &found),
            expected,
        ) {
            (Ok(uuid), Ok(wanted)) => assert_eq!(uuid, wanted),
            (Err(e), Err(wanted)) => {
                let e = e.to_string();
                assert!(e.contains(wanted), "{e}")
            }
            (got, wanted) => panic!("got {got:?}, wanted {wanted:?}"),
        };
        check(json!([{"uuid": "u1", "name": "web1"}]), Ok("u1"));
        check(json!([]), Err("not_found: no machine is named \"web1\""));
        check(
            json!([{"uuid": "u2", "name": "web10"}]),
            Err("no machine is named"),
        );
        check(json!({"oops": 1}), Err("no machine is named"));
        check(
            json!([{"uuid": "u1", "name": "web1"}, {"uuid": "u2", "name": "web1"}]),
            Err("2 machines are named \"web1\"; use a UUID: u1, u2"),
        );
    }

    #[test]
    fn patch_sources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, "- op: replace\n  path: /bootenv\n  value: local\n").unwrap();
        let from_file = PatchChanges {
            file: Some(Source::File(file)),
            set: vec![],
            unset: vec![],
        };
        assert_eq!(
            patch_ops(&from_file).unwrap(),
            json!([{"op": "replace", "path": "/bootenv", "value": "local"}])
        );
        let garbage = dir.path().join("g.json");
        std::fs::write(&garbage, "{\"op\": ").unwrap();
        let error = patch_ops(&PatchChanges {
            file: Some(Source::File(garbage)),
            set: vec![],
            unset: vec![],
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("g.json: not valid JSON"), "{error}");
    }

    #[test]
    fn timeout_is_whole_seconds_from_one_to_an_hour() {
        let timeout = |args: &[&str]| parse(args).map(|cli| cli.client.timeout_secs);
        assert_eq!(timeout(&["status"]).unwrap(), 10);
        assert_eq!(timeout(&["--timeout", "3", "status"]).unwrap(), 3);
        assert_eq!(
            timeout(&["machines", "list", "--timeout", "3600"]).unwrap(),
            3600
        );
        for bad in ["0", "3601", "-1", "1.5", "10s"] {
            let flag = format!("--timeout={bad}");
            let e = timeout(&[&flag, "status"]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert!(e.to_string().contains("--timeout"), "{bad}: {e}");
        }
    }

    #[test]
    fn admin_password_is_a_flag_of_founding_commands_only() {
        let help = |name: &str| {
            let mut command = Cli::command();
            let sub = command.find_subcommand_mut(name).expect(name);
            sub.render_long_help().to_string()
        };
        assert!(help("server").contains("--admin-password"));
        assert!(help("init").contains("--admin-password"));
        assert!(!help("join").contains("admin-password"), "{}", help("join"));
        let join = [
            "join",
            "--token",
            "a.b",
            "--ca-hash",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "https://n1:8443",
        ];
        assert!(parse(&join).is_ok());
        let mut with_password = join.to_vec();
        with_password.extend(["--admin-password", "x"]);
        assert!(parse(&with_password).is_err());
        let Command::Server(args) = parse(&["server", "--admin-password", "pw"])
            .unwrap()
            .command
        else {
            panic!("not server");
        };
        assert_eq!(args.into_settings().admin_password.as_deref(), Some("pw"));
    }
}
